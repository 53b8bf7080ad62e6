"""Where the seed-to-seed spread of the ILA ranking comes from: the data order or the model seed.

docs/method.md, "Stage 1": one ``--seed`` seeds both the order in which stage 1 draws the
examples and the model's own randomness (the LoRA initialisation of A_i, dropout). Stage 2
learned twice on one adapter agrees on 0.96-0.98 of its top 25% (``bench_stability``), so
the spread between seeds is made in stage 1. This script separates its two sources: it
records stage 1 (``record_stage1.py``, clean protocol) to a fixed step for a set of
(model seed, data seed) cells, learns stage 2 on each adapter with one fixed stage-2 seed,
and compares the rankings of pairs that differ only in the data order, only in the model
seed, or in both. The update norms ||Delta_i|| at that step (the ``lora-norm`` ranking of
the same adapters) are compared the same way. Writes its section of docs/results.md::

    python benchmarks/bench_seed_sources.py --work-dir runs/bench-seed-sources \\
        [--data ila-instruct] [--model-seeds 0 1 2] [--data-seeds 0 1 2] [--step 100]

Cells: every model seed with the first data seed, and the first model seed with every data
seed. Finished cells are reused; ``--report-only`` reports them without running more, and
``--cells M:D ...`` runs only those cells (several processes can share the work) without
writing the report.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_stability import FRACTION, Stage2Runner, overlap_row, tail_scores
from ila.config import ScoreConfig
from ila.core.scores import expected_random_jaccard, top_count
from record_stage1 import record
from results_file import write_section

Cell = tuple[int, int]  # (model seed, data seed)


def cell_dir(work_dir: Path, data: str, cell: Cell) -> Path:
    return work_dir / data / f"seed{cell[0]}-data{cell[1]}"


def stage2_dir(run_dir: Path, step: int, stage2_seed: int) -> Path:
    return run_dir / "stage2" / f"step-{step}-accum2-seed{stage2_seed}"


def run_cell(
    data: str, cell: Cell, step: int, stage2_seed: int, work_dir: Path, runner: Stage2Runner
) -> None:
    """Record stage 1 of ``cell`` to ``step`` and learn stage 2 on the adapter there."""
    run_dir = cell_dir(work_dir, data, cell)
    if not (run_dir / "curve.json").is_file():
        record(data, cell[0], step, 10, step, run_dir, data_seed=cell[1])
    curve = json.loads((run_dir / "curve.json").read_text())
    curve["dir"] = run_dir
    runner.run(curve, (step,), stage2_seed, 2, stage2_dir(run_dir, step, stage2_seed))


def parse_cell(text: str) -> Cell:
    model, _, data = text.partition(":")
    if not (model.isdigit() and data.isdigit()):
        raise argparse.ArgumentTypeError(f"cell {text!r}: write MODEL_SEED:DATA_SEED, e.g. 1:0")
    return int(model), int(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-seed-sources"))
    parser.add_argument("--data", default="ila-instruct")
    parser.add_argument("--model-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--step", type=int, default=100, help="stage-1 step of every adapter (default: 100)"
    )
    parser.add_argument("--stage2-seed", type=int, default=0)
    parser.add_argument("--cells", type=parse_cell, nargs="+", help="run only these cells")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    m0, d0 = args.model_seeds[0], args.data_seeds[0]
    cells = [(m, d0) for m in args.model_seeds] + [(m0, d) for d in args.data_seeds[1:]]
    if not args.report_only:
        runner = Stage2Runner()
        for cell in args.cells or cells:
            run_cell(args.data, cell, args.step, args.stage2_seed, args.work_dir, runner)
        if args.cells:
            return

    masks: dict[Cell, list[float]] = {}
    norms: dict[Cell, list[float]] = {}
    names: list[str] = []
    for cell in cells:
        run_dir = cell_dir(args.work_dir, args.data, cell)
        out = stage2_dir(run_dir, args.step, args.stage2_seed)
        if not (out / "stage2" / "summary.json").is_file():
            continue
        curve = json.loads((run_dir / "curve.json").read_text())
        names = curve["unit_names"]
        masks[cell] = tail_scores(out, ScoreConfig().stage2.tail_fraction)
        norms[cell] = curve["norms"][str(args.step)]
    if len(masks) < 2:
        raise SystemExit(f"fewer than two finished cells under {args.work_dir}: nothing to compare")
    types = [name.split(".", 2)[2] for name in names]
    chance = expected_random_jaccard(len(names), top_count(len(names), FRACTION))
    groups = {
        "same data order, other model seed (LoRA init, dropout)": lambda a, b: a[1] == b[1],
        "same model seed, other data order": lambda a, b: a[0] == b[0],
        "other data order and other model seed": lambda a, b: a[0] != b[0] and a[1] != b[1],
    }
    finished = sorted(masks)
    lines = [
        "## Where the seed-to-seed spread comes from (`benchmarks/bench_seed_sources.py`)",
        "",
        f"SmolLM2-135M on {args.data}, clean protocol (max length 128, split seed 0, batch 4, "
        f"LoRA r 8, lr 1e-3 constant). Stage 1 recorded to step {args.step} for each (model "
        "seed, data seed) cell: the model seed draws the LoRA initialisation and dropout, the "
        "data seed the order of the examples (the Trainer's `data_seed`). Stage 2 with the "
        f"current defaults and one stage-2 seed ({args.stage2_seed}) on every adapter. Cells "
        f"(model:data): {', '.join(f'{m}:{d}' for m, d in finished)}. Command: `python "
        f"benchmarks/bench_seed_sources.py --work-dir {args.work_dir} --data {args.data} "
        f"--model-seeds {' '.join(map(str, args.model_seeds))} --data-seeds "
        f"{' '.join(map(str, args.data_seeds))} --step {args.step}`.",
        "",
        "| pairs that differ in | pairs | top-25% Jaccard mean (range) | structural null | "
        "chance | Spearman |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, same in groups.items():
        pairs = [(masks[a], masks[b]) for a, b in itertools.combinations(finished, 2) if same(a, b)]
        lines.append(overlap_row(f"ILA: {label}", pairs, names, types, chance))
    for label, same in groups.items():
        pairs = [(norms[a], norms[b]) for a, b in itertools.combinations(finished, 2) if same(a, b)]
        lines.append(overlap_row(f"update norms: {label}", pairs, names, types, chance))
    text = "\n".join(lines)
    if not args.cells:
        write_section("bench_seed_sources", text)
    print(text)


if __name__ == "__main__":
    main()
