"""SentencePiece-style Unigram tokenizers that load as transformers' DebertaV2Tokenizer.

Trained with the `tokenizers` library, with "▁" word-start pieces and the special tokens at fixed ids [PAD]=0,
[CLS]=1, [SEP]=2, [UNK]=3, [MASK]=4. Pairs are encoded as [CLS] A [SEP] B [SEP] with token type ids 0/1. The saved
directory loads with `AutoTokenizer.from_pretrained(dir)`, with or without this package. Tokenizers carry the length
of the model they feed (`model_max_length`), so `truncation=True` cuts inputs to what the model takes.

Normalisation is DebertaV2Tokenizer's own (NFC, whitespace runs folded): transformers 5.23 rebuilds that normaliser
whenever it loads a DebertaV2Tokenizer, so training with anything else (NFKC) would tokenise differently after
loading.
"""

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer
from tokenizers.models import Unigram
from tokenizers.trainers import UnigramTrainer
from transformers import DebertaV2Tokenizer, PretrainedConfig, PreTrainedTokenizerBase


SPECIAL_TOKENS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
# max_position_embeddings of configs/xsmall, small, base and large.json: masked LM with the enhanced mask decoder is
# capped there, and DeBERTa models are trained at that length.
DEFAULT_MODEL_MAX_LENGTH = 512


def _non_empty(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if text and text.strip():
            yield text


def train_unigram_tokenizer(
    texts: Iterable[str], vocab_size: int = 8000, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH
) -> DebertaV2Tokenizer:
    """Train a Unigram vocabulary on `texts` (empty ones skipped) and wrap it as a DebertaV2Tokenizer."""
    _check_model_max_length(model_max_length)  # before training, not after
    counted = {"texts": 0}

    def counting(source):
        for text in _non_empty(source):
            counted["texts"] += 1
            yield text

    tokenizer = Tokenizer(Unigram())
    reference = DebertaV2Tokenizer().backend_tokenizer  # train with the pipeline the tokenizer will load with
    tokenizer.normalizer = reference.normalizer
    tokenizer.pre_tokenizer = reference.pre_tokenizer
    trainer = UnigramTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, unk_token="[UNK]", show_progress=False
    )
    tokenizer.train_from_iterator(counting(texts), trainer=trainer)
    if counted["texts"] == 0:
        raise ValueError("the tokenizer corpus is empty: no non-blank text to train on")
    # The trained model keeps the special tokens first, in SPECIAL_TOKENS order.
    vocab = [(piece, score) for piece, score in json.loads(tokenizer.to_str())["model"]["vocab"]]
    return wrap_unigram_vocab(vocab, model_max_length)


def _check_model_max_length(model_max_length: int) -> None:
    if model_max_length < 1:
        raise ValueError(f"model_max_length must be a positive number of tokens, got {model_max_length}")


def wrap_unigram_vocab(
    vocab: list[tuple[str, float]], model_max_length: int = DEFAULT_MODEL_MAX_LENGTH
) -> DebertaV2Tokenizer:
    """A DebertaV2Tokenizer over an ordered (piece, score) vocabulary whose first entries are SPECIAL_TOKENS."""
    _check_model_max_length(model_max_length)
    pieces = [piece for piece, _ in vocab[: len(SPECIAL_TOKENS)]]
    if pieces != SPECIAL_TOKENS:
        raise ValueError(f"the vocabulary must start with {SPECIAL_TOKENS}, got {pieces}")
    return DebertaV2Tokenizer(
        vocab=[(piece, float(score)) for piece, score in vocab],
        unk_id=SPECIAL_TOKENS.index("[UNK]"),
        model_max_length=model_max_length,
    )


def fit_tokenizer_to_model(tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig) -> PreTrainedTokenizerBase:
    """Lower `tokenizer.model_max_length` to the model's max_position_embeddings when that is smaller, in place.

    Call it before saving a tokenizer next to a model: `truncation=True` (and pipelines) then cut inputs to the
    length the model takes; masked LM with the enhanced mask decoder refuses longer ones.
    """
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and tokenizer.model_max_length > limit:
        tokenizer.model_max_length = limit
    return tokenizer


def tokenizer_from_spm(spm_model: str | Path, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH) -> DebertaV2Tokenizer:
    """Wrap an existing SentencePiece unigram `spm.model`: its pieces and scores, after the special tokens at 0-4.

    The model's own control and unknown pieces (<unk>, <s>, </s>) are replaced by ours.
    """
    import sentencepiece

    if not Path(spm_model).is_file():
        raise FileNotFoundError(f"SentencePiece model not found: {spm_model}")
    processor = sentencepiece.SentencePieceProcessor(model_file=str(spm_model))
    pieces = [
        (processor.id_to_piece(i), processor.get_score(i))
        for i in range(processor.get_piece_size())
        if not (processor.is_control(i) or processor.is_unknown(i)) and processor.id_to_piece(i) not in SPECIAL_TOKENS
    ]
    return wrap_unigram_vocab([(token, 0.0) for token in SPECIAL_TOKENS] + pieces, model_max_length)


def read_text_files(paths: Iterable[str | Path]) -> Iterator[str]:
    """Lines of UTF-8 text files; a file that does not exist is an error that names it."""
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer corpus file not found: {path}")
        with path.open(encoding="utf-8", errors="replace") as handle:
            yield from handle
