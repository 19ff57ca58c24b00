"""One process of a 2-process FSDP2 run on the CPU (gloo), launched by tests/test_accelerate.py with
torch.distributed.run.

For each embedding sharing mode named on the command line, a tiny ReplacedTokenDetectionModel is sharded with
torch's `fully_shard` as configs/accelerate/fsdp.yaml asks (each DebertaLiteLayer, then the whole model) and takes 2
SGD steps next to an unsharded copy, both on the same batch and random state. The full state dict is then gathered
to rank 0, loaded into a new model and saved as discriminator/ and generator/ (as ReplacedTokenDetectionTrainer saves
under FSDP). Rank 0 writes results.json in the output folder: per mode, how many parameters were sharded (DTensors)
of how many, the largest difference between the gathered and the unsharded weights, and between the saved
checkpoints, reloaded, and the unsharded model's folded discriminator and generator.

    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_worker.py OUTPUT_DIR gdes [shared none]
"""

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers import AutoModelForMaskedLM, AutoModelForPreTraining

from deberta_lite import DebertaLiteForMaskedLM, DebertaLiteForReplacedTokenDetection
from deberta_lite.modeling_deberta_lite import DebertaLiteLayer
from deberta_lite.rtd import ReplacedTokenDetectionModel, generator_config

from helpers import RTD_SPECIAL_IDS, rtd_batch, tiny_config


def build(sharing: str) -> ReplacedTokenDetectionModel:
    # An absolute position table in both models, so that GDES and sharing reach two tables.
    config = tiny_config(position_biased_input=True)
    generator = DebertaLiteForMaskedLM(generator_config(config))
    return ReplacedTokenDetectionModel(
        generator, DebertaLiteForReplacedTokenDetection(config), sharing, special_token_ids=RTD_SPECIAL_IDS
    )


def largest_difference(actual: dict, expected: dict) -> float:
    if actual.keys() != expected.keys():
        return float("inf")
    return max((actual[name] - expected[name]).abs().max().item() for name in expected)


def run(sharing: str, output_dir: Path) -> dict | None:
    torch.manual_seed(0)
    model = build(sharing)
    reference = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, DebertaLiteLayer):
            fully_shard(module)
    fully_shard(model)
    parameters = list(model.parameters())
    sharded = sum(isinstance(parameter, DTensor) for parameter in parameters)
    for trained in (model, reference):
        optimizer = torch.optim.SGD(trained.parameters(), lr=0.1)
        for step in range(2):
            torch.manual_seed(step)  # the generator's samples
            trained(**rtd_batch(seed=step)).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    saved = build(sharing)
    saved.load_state_dict(full)
    saved.save_pretrained(output_dir / sharing)
    discriminator = AutoModelForPreTraining.from_pretrained(output_dir / sharing / "discriminator").state_dict()
    generator = AutoModelForMaskedLM.from_pretrained(output_dir / sharing / "generator").state_dict()
    return {
        "sharded": sharded,
        "parameters": len(parameters),
        "gathered": largest_difference(full, reference.state_dict()),
        "discriminator": largest_difference(discriminator, reference.discriminator_for_saving().state_dict()),
        "generator": largest_difference(generator, reference.generator.state_dict()),
    }


def main():
    output_dir, modes = Path(sys.argv[1]), sys.argv[2:]
    dist.init_process_group("gloo")
    results = {sharing: run(sharing, output_dir) for sharing in modes}
    if dist.get_rank() == 0:
        (output_dir / "results.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
