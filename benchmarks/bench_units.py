"""Block units against the block view of module units, on the same stage-1 adapters.

docs/method.md, "Unit": ila gates each linear module by default (``--stage2-unit
module``) and reports a block's importance as the mean gate of its modules (the block
view). The paper ranks layers. This script learns stage 2 with one gate per block
(``--stage2-unit block``) from the finished stage-1 adapters of ``bench_overlap.py`` (so
stage 1 is shared, and only the unit of stage 2 differs) and compares, for the top 25%
of blocks (8 of 30):

* seed vs seed on one dataset, and across alignment datasets;
* for block gates and for the block view of the module gates of the same runs;

next to the Jaccard of random sets (there are no module types to keep in a block null).
Writes its section of docs/results.md. Usage::

    python benchmarks/bench_overlap.py ...   # the stage-1 adapters
    python benchmarks/bench_units.py --overlap-dir runs/bench-overlap \\
        --work-dir runs/bench-units [--data ila-instruct chitchat] [--seeds 0 1 2]

Stage-2 runs already in the work dir are reused (about 10 minutes each on one CPU thread).
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

from bench_overlap import block_top, fmt
from bench_stability import Stage2Runner, tail_scores
from ila.analysis.compare import spearman
from ila.config import ScoreConfig
from ila.core.scores import LayerScores, expected_random_jaccard, jaccard, top_count
from results_file import write_section

FRACTION = 0.25


def block_gate_top(out: Path, fraction: float) -> tuple[set[int], list[float]]:
    """The top blocks of a block-unit stage 2 (tail-averaged s, as `ila score` ranks)."""
    scores = tail_scores(out, ScoreConfig().stage2.tail_fraction)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return set(order[: top_count(len(scores), fraction)]), scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--overlap-dir", type=Path, default=Path("runs/bench-overlap"))
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-units"))
    parser.add_argument("--data", nargs="+", default=["ila-instruct", "chitchat"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--report-only", action="store_true", help="report the finished stage-2 runs only"
    )
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    runner = None if args.report_only else Stage2Runner()
    accum = ScoreConfig().stage2.grad_accum
    runs: dict[tuple[str, int], tuple[set[int], list[float], set[int], list[float]]] = {}
    for seed in args.seeds:  # seed-major: every dataset gets its pairs early
        for data in args.data:
            source = args.overlap_dir / data / f"seed{seed}"
            if not (source / "layer_scores.json").is_file():
                continue
            out = args.work_dir / data / f"seed{seed}"
            adapter = source / "stage1" / "adapter" / "adapter_model.safetensors"
            if runner is not None:
                runner.run_files(data, [adapter], seed, accum, out, unit="block")
            if not (out / "stage2" / "summary.json").is_file():
                continue
            module = LayerScores.load(source)
            view = module.block_scores()
            view_scores = [view[b] for b in sorted(view)]
            gate_top, gate_scores = block_gate_top(out, FRACTION)
            runs[(data, seed)] = (gate_top, gate_scores, block_top(module, FRACTION), view_scores)

    n_blocks = len(next(iter(runs.values()))[1]) if runs else 30
    chance = expected_random_jaccard(n_blocks, top_count(n_blocks, FRACTION))
    groups: list[tuple[str, list[tuple[tuple[str, int], tuple[str, int]]]]] = []
    for data in args.data:
        keys = [k for k in runs if k[0] == data]
        groups.append((f"seed vs seed: {data}", list(itertools.combinations(keys, 2))))
    cross = [(a, b) for a, b in itertools.combinations(runs, 2) if a[0] != b[0]]
    groups.append(("across datasets", cross))
    rows = []
    for label, pairs in groups:
        if not pairs:
            continue
        gate = [jaccard(sorted(runs[a][0]), sorted(runs[b][0])) for a, b in pairs]
        view = [jaccard(sorted(runs[a][2]), sorted(runs[b][2])) for a, b in pairs]
        rho_gate = [spearman(runs[a][1], runs[b][1]) for a, b in pairs]
        rho_view = [spearman(runs[a][3], runs[b][3]) for a, b in pairs]
        rows.append(
            f"| {label} | {len(pairs)} | {fmt(gate)} | {fmt(view)} | {fmt(rho_gate)} | "
            f"{fmt(rho_view)} |"
        )
    same = [jaccard(sorted(g), sorted(v)) for g, _, v, _ in runs.values()]
    seconds = [
        json.loads((args.work_dir / d / f"seed{s}" / "stage2" / "summary.json").read_text()).get(
            "seconds"
        )
        for d, s in runs
    ]
    listed = ", ".join(f"{d} seed {s}" for d, s in runs)
    lines = [
        "## Block units against the block view of module units (`benchmarks/bench_units.py`)",
        "",
        "SmolLM2-135M. Stage 2 with one gate per block (`--stage2-unit block`, 30 gates) "
        "learned from the stage-1 adapters of the `bench_overlap` runs "
        f"({listed}), with the default stage-2 settings and the run's seed; the block view "
        "is the mean gate of a block's modules in the same run's module-unit ranking. "
        f"Top 25% = {top_count(n_blocks, FRACTION)} of {n_blocks} blocks; random sets "
        f"{chance:.2f}. Command: `python benchmarks/bench_units.py --overlap-dir "
        f"{args.overlap_dir} --work-dir {args.work_dir} --data {' '.join(args.data)} "
        f"--seeds {' '.join(map(str, args.seeds))}`.",
        "",
        "| comparison | pairs | block gates: top-25% Jaccard | block view of module gates | "
        "block gates: Spearman | block view: Spearman |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Same run, block gates against the block view: top-25% Jaccard {fmt(same)}. "
        + (
            f"A block-unit stage 2 took {fmt([s / 60 for s in seconds if s])} min on one CPU "
            "thread, with other jobs sharing the 2 cores."
            if any(seconds)
            else ""
        ),
    ]
    text = "\n".join(lines)
    write_section("bench_units", text)
    print(text)


if __name__ == "__main__":
    main()
