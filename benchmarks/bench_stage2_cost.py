"""A cheaper stage 2 that ranks the same: candidate settings against the default stage 2.

ILA's stage 2 (docs/method.md, "Stage 2") learns one gate per unit on the frozen stage-1
Delta; it is the larger part of ILA's cost. This script learns the gates again on the
stage-1 adapter of each ILA run given, with the default settings (the reference) and with
each cheaper candidate, at the same stage-2 seed, and reports per candidate the stage-2
time against the reference and the top-25% Jaccard of its ranking against the
reference's. A candidate is worth adopting when that Jaccard is at least 0.9 on every run.
The default stage 2 at a second seed gives the noise floor: how well the reference agrees
with itself. Candidates are ``key:value[,key:value]`` over the stage-2 settings
(``steps``, ``grad_accum``, ...) and ``max_length`` (the stage-2 sequences cut shorter).
Usage::

    python benchmarks/bench_stage2_cost.py runs/bench-overlap/ila-instruct/seed0 \\
        --candidates steps:30 grad_accum:1 max_length:64 steps:30,grad_accum:1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import write_section
from stage1_run import learn_gates, load_stage1_run

REFERENCE = "default"
TARGET = 0.9


def parse_candidate(text: str) -> dict[str, int | float]:
    """``steps:30,grad_accum:1`` -> {"steps": 30, "grad_accum": 1}."""
    settings: dict[str, int | float] = {}
    for part in text.split(","):
        key, sep, value = part.partition(":")
        if not sep or not key:
            raise SystemExit(f"candidate {text!r}: write key:value[,key:value]")
        settings[key] = float(value) if "." in value else int(value)
    return settings


def gates_of(run, out: Path, **settings) -> dict:
    """The stage-2 summary of ``settings`` on ``run``: learned now, or read back from
    ``out`` when an earlier invocation finished it (the benchmark can be resumed)."""
    done = out / "stage2" / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    return learn_gates(run, out, **settings)


def top(gates: list[float], k: int) -> list[int]:
    """Indices of the ``k`` largest gates (ties: model order)."""
    return sorted(range(len(gates)), key=lambda i: (-gates[i], i))[:k]


def main() -> None:
    from ila.core.scores import expected_random_jaccard, jaccard, top_count

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", type=Path, nargs="+", help="ila score runs (stage-1 adapters)")
    parser.add_argument(
        "--candidates", nargs="+", default=["steps:30", "grad_accum:1", "max_length:64"]
    )
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-stage2-cost"))
    parser.add_argument(
        "--no-floor", action="store_true", help="skip the default stage 2 at a second seed"
    )
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    candidates = {name: parse_candidate(name) for name in args.candidates}

    # rows[candidate] = list of (seconds ratio, Jaccard against the reference), one per run
    rows: dict[str, list[tuple[float, float]]] = {name: [] for name in candidates}
    floor: list[float] = []
    notes, reference_seconds = [], []
    n = k = 0
    for r, run_dir in enumerate(args.run_dirs):
        run = load_stage1_run(run_dir)
        notes.append(f"- run {r}: {run.note}")
        seed = run.config.train.seed
        n = len(run.layer_map.units)
        k = top_count(n, 0.25)

        reference = gates_of(run, args.work_dir / f"run{r}-{REFERENCE}", seed=seed)
        reference_seconds.append(reference["seconds"])
        print(f"run {r} reference: {reference['seconds']:.0f} s", flush=True)
        if not args.no_floor:
            other = gates_of(run, args.work_dir / f"run{r}-{REFERENCE}-seed+1", seed=seed + 1)
            floor.append(jaccard(top(reference["gates"], k), top(other["gates"], k)))
        for name, settings in candidates.items():
            settings = dict(settings)
            max_length = settings.pop("max_length", None)
            features = run.features(int(max_length)) if max_length else None
            summary = gates_of(
                run,
                args.work_dir / f"run{r}-{name.replace(':', '-').replace(',', '_')}",
                seed=seed,
                features=features,
                **settings,
            )
            ratio = summary["seconds"] / reference["seconds"]
            agreement = jaccard(top(reference["gates"], k), top(summary["gates"], k))
            rows[name].append((ratio, agreement))
            print(f"run {r} {name}: time x{ratio:.2f}, Jaccard {agreement:.3f}", flush=True)
        del run

    def spread(values: list[float], digits: int) -> str:
        mean = f"{statistics.fmean(values):.{digits}f}"
        if len(values) == 1:
            return mean
        return f"{mean} ({min(values):.{digits}f}-{max(values):.{digits}f})"

    lines = [
        "## A cheaper stage 2 (`benchmarks/bench_stage2_cost.py`)",
        "",
        f"Measured {started}. Stage 2 learned again on the stage-1 adapter of each run below, "
        "with the default settings (the reference) and with each candidate, at the run's own "
        f"seed; top-25% Jaccard (k = {k} of {n} units; random expectation "
        f"{expected_random_jaccard(n, k):.2f}) of the candidate's ranking against the "
        f"reference's, and its stage-2 time against the reference's (reference: "
        f"{spread(reference_seconds, 0)} s). Adopt a candidate only where the Jaccard is at "
        f"least {TARGET} on every run. Command: `python benchmarks/bench_stage2_cost.py "
        + " ".join(str(r) for r in args.run_dirs)
        + " --candidates "
        + " ".join(args.candidates)
        + "`.",
        "",
        *notes,
        "",
        "| candidate | stage-2 time vs default | top-25% Jaccard vs default | all runs >= "
        f"{TARGET} |",
        "|---|---:|---:|---|",
    ]
    for name, values in rows.items():
        ratios, agreements = [v[0] for v in values], [v[1] for v in values]
        verdict = "yes" if min(agreements) >= TARGET else "no"
        lines.append(f"| `{name}` | {spread(ratios, 2)} | {spread(agreements, 3)} | {verdict} |")
    if floor:
        lines += [
            "",
            "Noise floor: the default stage 2 at a second seed agrees with the reference at "
            f"top-25% Jaccard {spread(floor, 3)}. A candidate cannot be expected to agree with "
            "one seed of the reference better than the reference agrees with itself.",
        ]
    markdown = "\n".join(lines)
    write_section("bench_stage2_cost", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
