"""One process of a 2-process DDP run on the CPU (gloo), launched by tests/test_accelerate.py with
torch.distributed.run.

Each model named on the command line takes 2 SGD steps wrapped in DistributedDataParallel(find_unused_parameters=False),
each process on its own batch. The process writes rank<k>.json in the output folder: per model, the error if one was
raised, the losses, and a checksum of every parameter before and after.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUTPUT_DIR MODEL [MODEL ...]
"""

import datetime
import json
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from transformers import DebertaV2ForSequenceClassification

from deberta_lite import DebertaLiteForMaskedLM, DebertaLiteForSequenceClassification

from helpers import padded_batch, tiny_config, v2_config


MODELS = {
    "DebertaLiteForSequenceClassification": lambda: DebertaLiteForSequenceClassification(tiny_config(num_labels=3)),
    "DebertaLiteForMaskedLM": lambda: DebertaLiteForMaskedLM(tiny_config()),
    # transformers' own DeBERTa-v3 layout, as a reference that trains under the same wrapper.
    "DebertaV2ForSequenceClassification": lambda: DebertaV2ForSequenceClassification(v2_config("v3", num_labels=3)),
}


def _batch(name: str, rank: int, step: int) -> dict:
    input_ids, attention_mask = padded_batch(seed=10 * rank + step)
    if name.endswith("MaskedLM"):
        labels = input_ids.masked_fill((attention_mask == 0) | (input_ids % 3 > 0), -100)
    else:
        labels = input_ids[:, 1] % 3
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def _checksums(model: torch.nn.Module) -> list[float]:
    return [float(param.detach().double().sum()) for param in model.parameters()]


def _train(name: str, rank: int) -> dict:
    torch.manual_seed(rank)  # each process initialises differently; DDP broadcasts rank 0's weights
    model = DistributedDataParallel(MODELS[name](), find_unused_parameters=False)
    initial = _checksums(model.module)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    try:
        for step in range(2):
            optimizer.zero_grad()
            loss = model(**_batch(name, rank, step)).loss
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    except RuntimeError:
        return {"error": traceback.format_exc(limit=1), "losses": losses}
    return {"error": None, "losses": losses, "initial": initial, "trained": _checksums(model.module)}


def main(output_dir: str, *names: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    results = {name: _train(name, rank) for name in names}
    Path(output_dir, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
