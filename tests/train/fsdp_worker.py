"""Worker for tests/train/test_fsdp.py: ila's readers and writers on an FSDP2-sharded model.

Run under ``torchrun --nproc_per_node 2`` (gloo, CPU) it shards a tiny Llama with LoRA the
way accelerate's FSDP2 plugin does (``fully_shard`` on each decoder block, then on the
root), and each process trains on its half of a batch. Run plainly with ``--reference``
it does the same in one process, unsharded, on the whole batch. Both write what ila reads
or saves (stage-1 update norms, the saved adapter, the stage-2 gates, the projected
scores, a fine-tune's saved weights) into ``--out`` for the test to compare.

Stage 1: Adam on the LoRA weights. Stage 2: gates attached ``--gates before`` the model is
sharded (FSDP manages them, as in a resumed stage 2) or ``after`` (stage 1's Trainer
already sharded it: ila.train.sharding.average_unmanaged_gradients averages their
gradients), SGD on the gate scores with the hinge budget, two micro-batches per step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest

from conftest import build_tiny_llama, build_tiny_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gates", choices=["before", "after"], default="after")
    parser.add_argument("--reference", action="store_true")
    parser.add_argument(
        "--no-average", action="store_true", help="control: leave unmanaged gates unsynchronised"
    )
    args = parser.parse_args()

    import torch.distributed as dist

    from ila.config import LoraSettings
    from ila.core.gates import attach_gates, budget_loss, project_to_budget
    from ila.core.layers import find_layers
    from ila.core.lora import add_lora, lora_update_norms
    from ila.jobs.finetune import _tuned_state
    from ila.scorers.ila import LoraUpdate
    from ila.train.sharding import average_unmanaged_gradients

    torch.manual_seed(0)
    rank, world = 0, 1
    if not args.reference:
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_llama(len(tokenizer))
    layer_map = find_layers(model)
    peft = add_lora(model, layer_map.units, LoraSettings(dropout=0.0), seed=0)
    batch = torch.randint(3, len(tokenizer), (8, 24), generator=torch.Generator().manual_seed(1))
    mine = batch if args.reference else batch.chunk(world)[rank]

    gated = None
    if args.gates == "before":
        gated = attach_gates(peft, layer_map)
        gated.bank.scores.requires_grad_(False)
    if not args.reference:
        from torch.distributed.fsdp import fully_shard

        for block in peft.get_base_model().model.layers:
            fully_shard(block)
        fully_shard(peft)

    # Stage 1: the LoRA weights.
    lora = [p for n, p in peft.named_parameters() if "lora_" in n]
    optimizer = torch.optim.Adam(lora, lr=0.01)
    for _ in range(4):
        optimizer.zero_grad()
        peft(input_ids=mine, labels=mine).loss.backward()
        optimizer.step()
    norms = lora_update_norms(peft, layer_map)
    update = LoraUpdate(peft, layer_map)
    state = update.gather()
    if rank == 0:
        update.save(args.out / "adapter", state)
    tuned = _tuned_state(peft, _Lora(), keep=rank == 0)

    # Stage 2: the gates on the frozen LoRA update.
    for p in lora:
        p.requires_grad_(False)
    if gated is None:
        gated = attach_gates(peft, layer_map)
    gated.bank.scores.requires_grad_(True)
    hooked = 0 if args.no_average else average_unmanaged_gradients(peft, [gated.bank.scores])
    # Plain SGD, so that each process's gradient shows in the scores (Adam's first steps
    # move by the sign of the gradient, which half a batch often shares).
    optimizer = torch.optim.SGD([gated.bank.scores], lr=20.0)
    for _ in range(3):
        optimizer.zero_grad()
        for half in mine.chunk(2):  # two micro-batches per step
            loss = peft(input_ids=half, labels=half).loss / 2
            loss = (
                loss
                + budget_loss(gated.gammas(), kind="hinge", weight=0.1, target_fraction=0.5) / 2
            )
            loss.backward()
        optimizer.step()
    gates = gated.gate_values()
    project_to_budget(gated.bank.scores, 0.3)
    projected = gated.raw_scores()

    if rank == 0:
        from safetensors.torch import save_file

        save_file(tuned, str(args.out / "tuned.safetensors"))
        (args.out / "result.json").write_text(
            json.dumps(
                {
                    "world": world,
                    "hooked": hooked,
                    "sharded_gates": type(gated.bank.scores).__name__,
                    "norms": norms.tolist(),
                    "gates": gates.tolist(),
                    "projected": projected.tolist(),
                }
            )
        )
    if not args.reference:
        dist.destroy_process_group()


class _Lora:
    method = "lora"


if __name__ == "__main__":
    main()
