"""sentence-transformers on a saved DeBERTa-lite checkpoint, offline: mean-pooled embeddings equal to pooling
DebertaLiteModel's last_hidden_state by hand, a save/reload round trip and a short training run."""

import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
from transformers import AutoTokenizer

from deberta_lite import DebertaLiteModel

from helpers import DATA, tiny_config


SENTENCES = [
    "The river flows through the old town.",
    "Hi",
    # Longer than the tiny model's 64 positions: sentence-transformers truncates to max_position_embeddings.
    " ".join(["A long sentence about the history of the region and the people who lived there."] * 8),
]


@pytest.fixture(scope="module")
def checkpoint(tokenizer_dir, tmp_path_factory):
    """A saved DebertaLiteModel beside its tokenizer, as a user's embedding-model starting point."""
    directory = tmp_path_factory.mktemp("deberta_lite_encoder")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = tiny_config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    DebertaLiteModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def mean_pooled(directory, sentences, max_length: int) -> torch.Tensor:
    """Mean of DebertaLiteModel's last_hidden_state over the tokens the attention mask keeps."""
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = DebertaLiteModel.from_pretrained(directory).eval()
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1)


@pytest.mark.parametrize("build", ["modules", "directory"])
def test_encode_is_mean_pooling_of_the_encoder(checkpoint, build, tmp_path):
    if build == "modules":
        model = SentenceTransformer(modules=[Transformer(str(checkpoint)), Pooling(32, "mean")], device="cpu")
    else:
        # A plain transformers checkpoint: sentence-transformers adds mean pooling itself.
        model = SentenceTransformer(str(checkpoint), device="cpu")
    assert type(model[0].model) is DebertaLiteModel
    assert model.max_seq_length == 64  # the model's max_position_embeddings, below the tokenizer's 512
    expected = mean_pooled(checkpoint, SENTENCES, max_length=64)

    embeddings = model.encode(SENTENCES, convert_to_tensor=True)
    assert embeddings.shape == (len(SENTENCES), 32)
    torch.testing.assert_close(embeddings, expected, rtol=0, atol=1e-5)

    model.save(str(tmp_path / "sentence_model"))
    reloaded = SentenceTransformer(str(tmp_path / "sentence_model"), device="cpu")
    torch.testing.assert_close(reloaded.encode(SENTENCES, convert_to_tensor=True), expected, rtol=0, atol=1e-5)


def test_training_brings_pairs_together_and_saves(checkpoint, tmp_path):
    lines = [line.strip() for line in (DATA / "wiki_sample" / "train.txt").read_text().splitlines() if line.strip()]
    # Two overlapping windows of the same line are a positive pair; the other lines of the batch are negatives.
    pairs = Dataset.from_dict(
        {"anchor": [line[:60] for line in lines[:16]], "positive": [line[40:120] for line in lines[:16]]}
    )
    model = SentenceTransformer(str(checkpoint), device="cpu")
    loss = MultipleNegativesRankingLoss(model)

    def pair_loss() -> float:
        """The ranking loss over all 16 pairs at once, each anchor against every positive."""
        model.eval()
        features = [model.preprocess(pairs[column]) for column in ("anchor", "positive")]
        with torch.no_grad():
            return loss(features, labels=None).item()

    initial = pair_loss()
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=4,
        learning_rate=1e-3,
        per_device_train_batch_size=8,
        seed=0,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs, loss=loss).train()
    assert pair_loss() < 0.5 * initial

    model.save(str(tmp_path / "trained"))
    trained = model.encode(SENTENCES, convert_to_tensor=True)
    reloaded = SentenceTransformer(str(tmp_path / "trained"), device="cpu")
    torch.testing.assert_close(reloaded.encode(SENTENCES, convert_to_tensor=True), trained, rtol=0, atol=1e-5)
    # The saved encoder is a plain DeBERTa-lite checkpoint: mean pooling by hand still gives the embeddings.
    torch.testing.assert_close(mean_pooled(tmp_path / "trained", SENTENCES, max_length=64), trained, rtol=0, atol=1e-5)
