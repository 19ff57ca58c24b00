"""SentencePiece-style Unigram tokenizers that load as transformers' DebertaV2Tokenizer.

Trained with the `tokenizers` library, with "▁" word-start pieces and the special tokens at fixed ids [PAD]=0,
[CLS]=1, [SEP]=2, [UNK]=3, [MASK]=4. Pairs are encoded as [CLS] A [SEP] B [SEP] with token type ids 0/1. The saved
directory loads with `AutoTokenizer.from_pretrained(dir)`, with or without this package.

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
from transformers import DebertaV2Tokenizer


SPECIAL_TOKENS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]


def _non_empty(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if text and text.strip():
            yield text


def train_unigram_tokenizer(texts: Iterable[str], vocab_size: int = 8000) -> DebertaV2Tokenizer:
    """Train a Unigram vocabulary on `texts` (empty ones skipped) and wrap it as a DebertaV2Tokenizer."""
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
    return wrap_unigram_vocab(vocab)


def wrap_unigram_vocab(vocab: list[tuple[str, float]]) -> DebertaV2Tokenizer:
    """A DebertaV2Tokenizer over an ordered (piece, score) vocabulary whose first entries are SPECIAL_TOKENS."""
    pieces = [piece for piece, _ in vocab[: len(SPECIAL_TOKENS)]]
    if pieces != SPECIAL_TOKENS:
        raise ValueError(f"the vocabulary must start with {SPECIAL_TOKENS}, got {pieces}")
    return DebertaV2Tokenizer(
        vocab=[(piece, float(score)) for piece, score in vocab], unk_id=SPECIAL_TOKENS.index("[UNK]")
    )


def tokenizer_from_spm(spm_model: str | Path) -> DebertaV2Tokenizer:
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
    return wrap_unigram_vocab([(token, 0.0) for token in SPECIAL_TOKENS] + pieces)


def read_text_files(paths: Iterable[str | Path]) -> Iterator[str]:
    """Lines of UTF-8 text files; a file that does not exist is an error that names it."""
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer corpus file not found: {path}")
        with path.open(encoding="utf-8", errors="replace") as handle:
            yield from handle
