"""Stage-1 LoRA rank and the seed stability of the ILA ranking (review lever I9).

docs/method.md, "Stage 1": stage 1 trains a rank-r LoRA adapter (default r = 8, alpha
16). A larger rank makes Delta_i = (alpha / r) B_i A_i depend less on the random
subspace A_i starts in, which might make two seeds agree more. This script runs `ila
score` on ila-instruct at a larger rank (alpha scaled with r, so alpha / r stays 2) for
several seeds, under the clean protocol of ``bench_overlap.py``, and compares
seed-to-seed agreement with the default-rank runs of ``bench_overlap.py`` for the same
seeds: Jaccard of the top 10/25/50%, the structural null, Spearman, and the agreement of
the two ranks on one seed. Writes its section of docs/results.md. Usage::

    python benchmarks/bench_rank.py --overlap-dir runs/bench-overlap \\
        --work-dir runs/bench-levers [--rank 16] [--seeds 0 1 2]

Runs already finished in the work dir (``<work-dir>/rank<r>/seed<s>``) are reused;
``--only-existing`` reports them without starting any.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_overlap import DATA_FLAGS, FRACTIONS, fmt, pair_stats
from ila.analysis.compare import compare_scores
from ila.cli import main as ila_main
from ila.config import LoraSettings
from ila.core.scores import LayerScores
from results_file import write_section

DATA = "ila-instruct"


def rank_run(work_dir: Path, rank: int, seed: int, start: bool) -> LayerScores | None:
    """The rank-``rank`` run of ``seed`` (scored here when missing and ``start``)."""
    out = work_dir / f"rank{rank}" / f"seed{seed}"
    if not (out / "layer_scores.json").is_file():
        if not start:
            return None
        alpha = 2 * rank  # alpha / r = 2, as at the default r = 8, alpha = 16
        argv = ["-q", "score", "--data", DATA, "--seed", str(seed), "--output-dir", str(out)]
        argv += ["--lora-rank", str(rank), "--lora-alpha", str(alpha), *DATA_FLAGS[DATA]]
        if ila_main([*argv, "--overwrite"]) != 0:
            raise SystemExit(f"ila score failed at rank {rank}, seed {seed}")
    return LayerScores.load(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overlap-dir", type=Path, default=Path("runs/bench-overlap"))
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-levers"))
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only-existing", action="store_true")
    args = parser.parse_args()

    default_rank = LoraSettings().rank
    seeds, base, other = [], [], []
    for seed in args.seeds:
        run = rank_run(args.work_dir, args.rank, seed, start=not args.only_existing)
        ref = args.overlap_dir / DATA / f"seed{seed}"
        if run is None or not (ref / "layer_scores.json").is_file():
            continue
        seeds.append(seed)
        other.append(run)
        base.append(LayerScores.load(ref))
    if len(seeds) < 2:
        raise SystemExit("fewer than two seeds have runs at both ranks: nothing to compare")
    labels = {f"rank {default_rank}": base, f"rank {args.rank}": other}
    head = " | ".join(f"top {int(f * 100)}%" for f in FRACTIONS[:3])
    lines = [
        "## Stage-1 LoRA rank and seed stability (`benchmarks/bench_rank.py`)",
        "",
        f"SmolLM2-135M on {DATA}, `ila score` with default settings except the stage-1 LoRA "
        f"rank: r = {args.rank}, alpha = {2 * args.rank} against the default r = "
        f"{default_rank}, alpha = {2 * default_rank} (the `bench_overlap` runs; alpha / r = 2 "
        f"in both). Clean protocol of `bench_overlap` (max length 128, split seed 0). Seeds "
        f"{', '.join(map(str, seeds))} at both ranks. Command: `python "
        f"benchmarks/bench_rank.py --overlap-dir {args.overlap_dir} --work-dir "
        f"{args.work_dir} --rank {args.rank} --seeds {' '.join(map(str, args.seeds))}`.",
        "",
        f"| comparison | pairs | {head} | structural null, top 25% | Spearman |",
        "|---|---:|" + "---:|" * 5,
    ]
    for label in labels:
        values = pair_stats(labels, [(label, label)])
        cells = " | ".join(fmt(values[str(f)]) for f in FRACTIONS[:3])
        lines.append(
            f"| seed vs seed, {label} | {len(values['spearman'])} | {cells} | "
            f"{fmt(values['null25'])} | {fmt(values['spearman'])} |"
        )
    same_seed = [
        compare_scores([a, b], ["a", "b"], FRACTIONS).pairs[0]
        for a, b in zip(base, other, strict=True)
    ]
    cells = " | ".join(fmt([p.jaccard[f] for p in same_seed]) for f in FRACTIONS[:3])
    lines.append(
        f"| rank {default_rank} vs rank {args.rank}, same seed | {len(same_seed)} | {cells} | "
        f"{fmt([p.structural_null[0.25] for p in same_seed])} | "
        f"{fmt([p.spearman for p in same_seed])} |"
    )
    lines += ["", "| run | T | stage 1 |", "|---|---:|---|"]
    for label, runs in labels.items():
        for seed, run in zip(seeds, runs, strict=True):
            stable = "stable" if run.meta.get("stage1_stable") else "cap"
            lines.append(f"| {label}, seed {seed} | {run.meta.get('T')} | {stable} |")
    text = "\n".join(lines)
    write_section("bench_rank", text)
    print(text)


if __name__ == "__main__":
    main()
