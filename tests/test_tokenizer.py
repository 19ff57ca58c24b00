import itertools

import pytest
from transformers import AutoTokenizer, DebertaV2Tokenizer

from deberta_lite.tokenization import SPECIAL_TOKENS, read_text_files, train_unigram_tokenizer

from helpers import DATA, load_script, tiny_config, top_mask_predictions


train_tokenizer = load_script("train_tokenizer")


@pytest.fixture(scope="module")
def wiki_lines():
    return list(itertools.islice(read_text_files([DATA / "wiki_sample" / "train.txt"]), 2000))


def test_trained_tokenizer_round_trips_through_auto_tokenizer(wiki_lines, tmp_path):
    tokenizer = train_unigram_tokenizer(wiki_lines, vocab_size=1500)
    assert len(tokenizer) == 1500
    assert tokenizer.convert_ids_to_tokens(list(range(5))) == SPECIAL_TOKENS
    assert (
        tokenizer.pad_token_id,
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
        tokenizer.unk_token_id,
        tokenizer.mask_token_id,
    ) == (0, 1, 2, 3, 4)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(loaded, DebertaV2Tokenizer)
    texts = wiki_lines[100:140] + ["  Tabs\tand\nnew lines,  café — 1923 ünïcode ✓ "]
    for text in texts:
        assert loaded(text).input_ids == tokenizer(text).input_ids
    assert loaded.decode(loaded("the old city of rome").input_ids, skip_special_tokens=True) == "the old city of rome"
    pieces = tokenizer.tokenize("The river flows north")
    assert pieces[0].startswith("▁")
    # The pieces are what encoding gives between [CLS] and [SEP].
    assert tokenizer.convert_tokens_to_ids(pieces) == tokenizer("The river flows north").input_ids[1:-1]


def test_pairs_get_cls_a_sep_b_sep_with_token_types(wiki_lines):
    tokenizer = train_unigram_tokenizer(wiki_lines, vocab_size=1200)
    first, second = tokenizer("the city").input_ids, tokenizer("a river").input_ids
    pair = tokenizer("the city", "a river")
    assert pair.input_ids == [1, *first[1:-1], 2, *second[1:-1], 2]
    assert pair.token_type_ids == [0] * len(first) + [1] * (len(second) - 1)


def test_empty_corpus_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n\n")
    with pytest.raises(ValueError, match="corpus is empty"):
        train_unigram_tokenizer(read_text_files([empty]), vocab_size=100)
    with pytest.raises(SystemExit, match="corpus is empty"):
        train_tokenizer.main(["--train_files", str(empty), "--output_dir", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="not found"):
        train_tokenizer.main(["--train_files", str(tmp_path / "missing.txt"), "--output_dir", str(tmp_path / "out")])


def test_wrapping_an_existing_spm_model(tmp_path):
    import sentencepiece

    spm_path = DATA / "spm" / "unigram_1000.model"
    processor = sentencepiece.SentencePieceProcessor(model_file=str(spm_path))
    train_tokenizer.main(["--spm_model", str(spm_path), "--output_dir", str(tmp_path)])
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer.convert_ids_to_tokens(list(range(5))) == SPECIAL_TOKENS
    # Same pieces and segmentation as SentencePiece itself (its three control/unknown pieces replaced by ours).
    assert len(tokenizer) == processor.get_piece_size() - 3 + len(SPECIAL_TOKENS)
    text = "I am a cat. As yet I have no name."
    assert tokenizer.tokenize(text) == processor.encode(text, out_type=str)


def test_script_trains_from_text_files(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((DATA / "wiki_sample" / "validation.txt").read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    tokenizer = train_tokenizer.main(
        ["--train_files", str(corpus), "--vocab_size", "800", "--output_dir", str(tmp_path / "t")]
    )
    assert len(AutoTokenizer.from_pretrained(tmp_path / "t")) == len(tokenizer) == 800


# Real text longer than the models below take: about 300 pieces of the SentencePiece model.
LONG_TEXT = (DATA / "wiki_sample" / "validation.txt").read_text(encoding="utf-8")[:600]


def test_saved_tokenizers_truncate_to_the_model_length(tmp_path):
    train_tokenizer.main(["--spm_model", str(DATA / "spm" / "unigram_1000.model"), "--output_dir", str(tmp_path / "a")])
    wrapped = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert wrapped.model_max_length == 512  # the max_position_embeddings of configs/base.json
    assert len(wrapped(LONG_TEXT * 2).input_ids) > 512
    assert len(wrapped(LONG_TEXT * 2, truncation=True).input_ids) == 512

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(LONG_TEXT * 20, encoding="utf-8")
    train_tokenizer.main(
        [
            "--train_files",
            str(corpus),
            "--vocab_size",
            "300",
            "--model_max_length",
            "64",
            "--output_dir",
            str(tmp_path / "b"),
        ]
    )
    trained = AutoTokenizer.from_pretrained(tmp_path / "b")
    encoded = trained(LONG_TEXT, truncation=True)
    assert trained.model_max_length == 64 and len(encoded.input_ids) == 64 and encoded.input_ids[-1] == 2  # [SEP]
    with pytest.raises(SystemExit, match="model_max_length"):
        train_tokenizer.main(
            [
                "--spm_model",
                str(DATA / "spm" / "unigram_1000.model"),
                "--model_max_length",
                "0",
                "--output_dir",
                str(tmp_path / "c"),
            ]
        )


def test_fill_mask_pipeline_truncates_a_long_text(tmp_path):
    from transformers import pipeline

    from deberta_lite import DebertaLiteForMaskedLM

    train_tokenizer.main(
        [
            "--spm_model",
            str(DATA / "spm" / "unigram_1000.model"),
            "--model_max_length",
            "64",
            "--output_dir",
            str(tmp_path),
        ]
    )
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    # The enhanced mask decoder caps masked LM at max_position_embeddings tokens.
    DebertaLiteForMaskedLM(tiny_config(vocab_size=len(tokenizer), max_position_embeddings=64)).save_pretrained(tmp_path)
    text = f"The river {tokenizer.mask_token} north. {LONG_TEXT}"
    assert len(tokenizer(text).input_ids) > 250
    fill = pipeline("fill-mask", model=str(tmp_path), top_k=3)
    predictions = fill(text, tokenizer_kwargs={"truncation": True})
    tokens, scores = top_mask_predictions(tmp_path, text, top_k=3, truncation=True)
    assert [p["token"] for p in predictions] == tokens
    assert [p["score"] for p in predictions] == pytest.approx(scores, rel=1e-5)
