"""Is the ILA ranking a stable measurement? Stage-1 stopping rules and stage-2 settings.

Reads the long stage-1 recordings of ``benchmarks/record_stage1.py`` (loss of every step,
per-unit update norms every 10 steps, LoRA snapshots every 20 steps; one per dataset and
seed under one clean protocol: max length 128, split seed 0, batch 4, lr 1e-3) and:

1. applies every stopping rule offline to the same curves: the first, relative rule
   (its old defaults) and the drop rule with and without the ranking check. T per rule,
   in steps and epochs;
2. learns stage 2 (the current defaults) from the snapshot at the default rule's T, from
   the last snapshot every recording has ("end") and from each recording's own last
   snapshot where it is later ("last"), and from the snapshot at 2T where the recording
   reaches it ("2T"), and measures the paper's epsilon-stable claim as
   Jaccard(mask at T, mask later in the same run), next to the seed-to-seed and
   cross-dataset overlap at T, at end and at each recording's last snapshot (does a longer
   stage 1 make rankings agree more?), chance and the structural null (shuffle within
   module type);
3. learns stage 2 from the average of the LoRA weights over the last
   ``--average-snapshots`` snapshots up to T and up to the end (a tail average of the
   stage-1 iterates, which removes part of the SGD noise of the last iterate at a
   constant learning rate) and compares seed-to-seed agreement with the last iterate's;
4. on one adapter (the first recording, at its T), learns stage 2 with several
   stage-2 seeds for each gradient accumulation in ``--accums``, and compares the
   same-adapter agreement of the last iterate and of the tail-averaged s.

Writes its section of docs/results.md (``--section``; a second work dir, for example
recordings of one epoch each, writes its own). Without ``end`` in ``--points``, recordings
of different lengths are compared only within themselves (T, 2T, their own last snapshot)
and with each other at T. Usage::

    python benchmarks/record_stage1.py --data ila-instruct chitchat --seeds 0 1
    python benchmarks/bench_stability.py --work-dir runs/bench-stability
    python benchmarks/record_stage1.py --data chitchat --seeds 0 --steps 668 \
        --work-dir runs/bench-epoch
    python benchmarks/bench_stability.py --work-dir runs/bench-epoch --points T 2T last \
        --skip-variants --section bench_stability_epoch --title "..."
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ila.analysis.compare import spearman, structural_null_jaccard
from ila.config import ScoreConfig, Stage1Config
from ila.core.scores import expected_random_jaccard, jaccard, top_count
from ila.core.stability import detect_stable
from record_stage1 import LIMIT, MAX_LENGTH, SPLIT_SEED, benchmark_examples
from results_file import write_section

# Rules applied offline: (label, detect_stable keyword arguments).
_DEFAULT = Stage1Config()
RULES = [
    (
        "relative (first rule: W 20, eps 0.1, 5 steps)",
        {"criterion": "loss", "epsilon": 0.1, "window": 20, "patience": 5, "min_steps": 20},
    ),
    (
        "drop (W 20, eps 0.1, 2 checks)",
        {"criterion": "drop", "epsilon": 0.1, "window": 20, "patience": 2, "min_steps": 20},
    ),
    (
        "drop+ranking (default)",
        {
            "criterion": _DEFAULT.criterion,
            "epsilon": _DEFAULT.epsilon,
            "window": _DEFAULT.window,
            "patience": _DEFAULT.patience,
            "min_steps": _DEFAULT.min_steps,
            "rank_epsilon": _DEFAULT.rank_epsilon,
            "rank_fraction": _DEFAULT.rank_fraction,
        },
    ),
    (
        "drop+ranking (W 20, eps 0.05, rank eps 0.05)",
        {
            "criterion": "drop+ranking",
            "epsilon": 0.05,
            "window": 20,
            "patience": 2,
            "min_steps": 20,
            "rank_epsilon": 0.05,
        },
    ),
]
DEFAULT_RULE = "drop+ranking (default)"
# The datasets settings were chosen on; any other recording is an untouched check, kept
# out of the cross-dataset rows (docs/method.md, claims).
TUNING = {"ila-instruct", "chitchat"}
FRACTION = 0.25


def load_recordings(work_dir: Path) -> dict[tuple[str, int], dict]:
    found = {}
    for path in sorted(work_dir.glob("*/seed*/curve.json")):
        curve = json.loads(path.read_text())
        curve["dir"] = path.parent
        found[(curve["data"], curve["seed"])] = curve
    if not found:
        raise SystemExit(f"no recordings under {work_dir}; run benchmarks/record_stage1.py")
    return found


def rule_t(curve: dict, kwargs: dict) -> int | None:
    norms = {int(k): v for k, v in curve["norms"].items()}
    loss = curve["loss"]
    if kwargs["criterion"] == "drop+ranking":
        # Check steps past the recorded norms cannot be decided: cut the curve there.
        loss = loss[: max(norms)]
    return detect_stable(loss, unit_values=norms, **kwargs)


def snapshot_steps(curve: dict) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (curve["dir"] / "snapshots").glob("*"))


def snapshot_step(curve: dict, t: int | None) -> int:
    """The snapshot at T (rounded up to the snapshot grid), or the last one."""
    steps = snapshot_steps(curve)
    if t is None:
        return steps[-1]
    return min((s for s in steps if s >= t), default=steps[-1])


def snapshot_window(curve: dict, step: int, count: int) -> tuple[int, ...]:
    """The ``count`` snapshots ending at ``step`` (fewer where the recording starts later)."""
    steps = [s for s in snapshot_steps(curve) if s <= step]
    return tuple(steps[-count:])


class Stage2Runner:
    """Learns stage 2 from a recording's snapshot (model loaded once per process)."""

    def __init__(self) -> None:
        from ila.core.layers import find_layers
        from ila.data import PaddingCollator
        from ila.model.loading import load_model

        self.model, self.tokenizer = load_model("smollm2-135m", device="cpu")
        self.layer_map = find_layers(self.model)
        self.collator = PaddingCollator(self.tokenizer.pad_token_id)
        self.features: dict[str, tuple[list, str]] = {}

    def _features(self, data: str):
        if data not in self.features:
            from ila.data import data_fingerprint, split_examples
            from ila.data.tokenization import tokenize_examples

            train, _ = split_examples(benchmark_examples(data), eval_fraction=0.1, seed=SPLIT_SEED)
            features = tokenize_examples(train, self.tokenizer, max_length=MAX_LENGTH).features
            self.features[data] = (features, data_fingerprint(train))
        return self.features[data]

    def run(self, curve: dict, steps: tuple[int, ...], seed: int, accum: int, out: Path) -> dict:
        """Stage 2 on the snapshot at ``steps`` (one step), or on the mean of the LoRA
        weights of the snapshots at several steps (a tail average of stage 1)."""
        files = [curve["dir"] / "snapshots" / f"step-{s}.safetensors" for s in steps]
        precision = curve.get("precision", "auto")
        return self.run_files(curve["data"], files, seed, accum, out, precision=precision)

    def run_files(
        self,
        data: str,
        files: list[Path],
        seed: int,
        accum: int,
        out: Path,
        unit: str = "module",
        precision: str = "auto",
        stage2: dict | None = None,
        average: str = "weights",
    ) -> dict:
        """Stage 2 (``unit`` gates, stage-2 seed ``seed``, ``--precision``, other stage-2
        settings from ``stage2``) on the mean of the LoRA weights in ``files`` (one file:
        that adapter), or with ``average="update"`` on the mean of their updates
        Delta_i = (alpha / r) B_i A_i, through delta gates on the base model."""
        summary_path = out / "stage2" / "summary.json"
        if summary_path.is_file():
            return json.loads(summary_path.read_text())
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        from ila.config import LoraSettings
        from ila.core.lora import add_lora
        from ila.scorers.existing import learn_stage2

        features, fingerprint = self._features(data)
        loaded = [load_file(str(path)) for path in files]
        config = ScoreConfig()
        config = dataclasses.replace(
            config,
            # Stage 2 in the recording's precision where it is recorded.
            train=dataclasses.replace(config.train, seed=seed, precision=precision),
            stage2=dataclasses.replace(
                config.stage2, grad_accum=accum, unit=unit, **(stage2 or {})
            ),
        )
        deltas = None
        if average == "update":
            peft_model = self.model
            deltas = mean_updates(loaded, self.layer_map, LoraSettings())
        else:
            peft_model = add_lora(self.model, self.layer_map.units, LoraSettings(), seed=0)
            weights = {n: torch.stack([w[n] for w in loaded]).mean(0) for n in loaded[0]}
            set_peft_model_state_dict(peft_model, weights)
        start = time.perf_counter()
        try:
            summary = learn_stage2(
                peft_model,
                tokenizer=self.tokenizer,
                layer_map=self.layer_map,
                train_features=features,
                config=config,
                output_dir=out,
                data_fingerprint=fingerprint,
                model_id="smollm2-135m",
                deltas=deltas,
                seed=seed,
            )
        finally:
            if deltas is None:
                self.model = peft_model.unload()
        print(f"stage 2 {out}: {time.perf_counter() - start:.0f} s", flush=True)
        return summary


def mean_updates(loaded: list[dict], layer_map, lora) -> dict:
    """Each unit's LoRA update Delta_i = (alpha / r) B_i A_i averaged over the snapshots in
    ``loaded`` (peft state dicts): an iterate average of the update itself, which the mean
    of A and of B separately is not once A and B have moved."""
    import torch

    scale = lora.alpha / lora.rank
    deltas = {}
    for unit in layer_map.units:
        key = f"base_model.model.{unit.module_path}.lora_"
        products = [w[key + "B.weight"].float() @ w[key + "A.weight"].float() for w in loaded]
        deltas[unit.name] = scale * torch.stack(products).mean(0)
    return deltas


def top(values: list[float], fraction: float = FRACTION) -> set[int]:
    k = top_count(len(values), fraction)
    return set(sorted(range(len(values)), key=lambda i: (-values[i], i))[:k])


def tail_scores(out: Path, fraction: float) -> list[float]:
    from ila.scorers.ila import tail_mean

    trajectory = json.loads((out / "stage2" / "gate_trajectory.json").read_text())["scores"]
    return tail_mean(trajectory, fraction)


def overlap_row(
    label: str,
    pairs: list[tuple[list[float] | None, list[float] | None]],
    names: list[str],
    types: list[str],
    chance: float,
) -> str:
    """A table row: top-25% Jaccard over the finished pairs of rankings, beside the
    structural null (importances shuffled within module type), chance and Spearman."""
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not pairs:
        return f"| {label} | 0 | not measured (no finished pair) | | | |"
    js = [jaccard(top(a), top(b)) for a, b in pairs]
    nulls = [
        structural_null_jaccard(
            names, types, {names[i] for i in top(a)}, {names[i] for i in top(b)}, draws=4000
        )
        for a, b in pairs
    ]
    rhos = [spearman(a, b) for a, b in pairs]
    return (
        f"| {label} | {len(pairs)} | {statistics.fmean(js):.2f} ({min(js):.2f}-"
        f"{max(js):.2f}) | {statistics.fmean(nulls):.2f} | {chance:.2f} | "
        f"{statistics.fmean(rhos):.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-stability"))
    parser.add_argument("--variant-seeds", type=int, nargs="+", default=[0, 10, 11])
    parser.add_argument(
        "--report-only", action="store_true", help="report the finished stage-2 runs only"
    )
    parser.add_argument("--accums", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-variants", action="store_true")
    parser.add_argument(
        "--data", nargs="+", help="learn stage 2 for these datasets only (the report uses all)"
    )
    parser.add_argument(
        "--points",
        nargs="+",
        default=["T", "end", "last", "2T", "T-avg", "end-avg"],
        help="stage-1 points to learn stage 2 at and compare (end: the last snapshot every "
        "recording has; last: each recording's own last snapshot, where later than end, or "
        "than T without end; -avg: the LoRA average of the snapshots ending there); give the "
        "same points with --report-only",
    )
    parser.add_argument(
        "--section",
        default="bench_stability",
        help="the docs/results.md section to write (a second work dir writes its own section)",
    )
    parser.add_argument(
        "--title",
        default="Ranking stability: stage-1 stopping rules and stage-2 settings",
        help="the heading of that section",
    )
    parser.add_argument(
        "--average-snapshots",
        type=int,
        default=3,
        help="snapshots averaged for the -avg points (3 = the last 40 steps on the 20-step grid)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    recordings = load_recordings(args.work_dir)
    first = next(iter(recordings.values()))
    names = first["unit_names"]
    types = [n.split(".", 2)[2] for n in names]
    n = len(names)
    k = top_count(n, FRACTION)
    chance = expected_random_jaccard(n, k)

    # 1. T of every rule on every recording.
    t_rows = [
        "| data | seed | steps/epoch | " + " | ".join(r for r, _ in RULES) + " |",
        "|---|---:|---:|" + "---:|" * len(RULES),
    ]
    default_t = {}
    for key, curve in recordings.items():
        cells = []
        for label, kwargs in RULES:
            t = rule_t(curve, kwargs)
            if label == DEFAULT_RULE:
                default_t[key] = t
            epochs = "" if t is None else f" ({t / curve['steps_per_epoch']:.2f} ep)"
            cells.append(f"not by {len(curve['loss'])}" if t is None else f"{t}{epochs}")
        t_rows.append(
            f"| {key[0]} | {key[1]} | {curve['steps_per_epoch']} | " + " | ".join(cells) + " |"
        )

    # 2. Stage 2 at T and at a common later step (the last snapshot every recording has),
    # stage-2 seed = the recording's. Jobs run in order of importance: every T first.
    # Without "end" in --points, recordings of different lengths are compared only within
    # themselves (T, 2T, last) and across each other at T.
    runner = None if args.report_only else Stage2Runner()
    masks: dict[tuple[str, int, str], list[float]] = {}
    use_end = "end" in args.points
    compared = ("T", "end") if use_end else ("T",)
    end = min(snapshot_step(curve, None) for curve in recordings.values())
    steps_used = {
        key: (snapshot_step(curve, default_t[key]), end) for key, curve in recordings.items()
    }
    # The same two points also from the LoRA average of the snapshots ending there (3.).
    windows = {
        (key, label): snapshot_window(curve, steps_used[key][index], args.average_snapshots)
        for index, label in ((0, "T-avg"), (1, "end-avg"))
        for key, curve in recordings.items()
    }
    # Each recording's own last snapshot, where it ran past the common end: the closest
    # this benchmark gets to "the mask after one epoch" (docs/method.md, claims).
    last = {
        key: snapshot_step(curve, None)
        for key, curve in recordings.items()
        if snapshot_step(curve, None) > (max(steps_used[key]) if use_end else steps_used[key][0])
    }
    # 2T, where the recording reaches it and it is a new point (docs/method.md, claims:
    # the paper compares the mask at T with masks learned after longer training).
    doubled: dict[tuple[str, int], int] = {}
    last_is_2t: set[tuple[str, int]] = set()
    for key, curve in recordings.items():
        if default_t[key] is None or 2 * default_t[key] > snapshot_step(curve, None):
            continue
        step = snapshot_step(curve, 2 * default_t[key])
        if step not in (*steps_used[key][: len(compared)], last.get(key)):
            doubled[key] = step
        elif step == last.get(key):
            last_is_2t.add(key)
    jobs = [
        (label, key, (steps_used[key][index],))
        for index, label in enumerate(compared)
        for key in recordings
    ]
    jobs += [("last", key, (step,)) for key, step in last.items()]
    jobs += [("2T", key, (step,)) for key, step in doubled.items()]
    if args.average_snapshots > 1:
        jobs += [
            (label, key, windows[(key, label)])
            for label in (f"{point}-avg" for point in compared)
            for key in recordings
            if len(windows[(key, label)]) > 1
        ]
    for label, key, steps in jobs:
        curve = recordings[key]
        name = f"step-{steps[0]}" if len(steps) == 1 else "avg-" + "-".join(map(str, steps))
        out = curve["dir"] / "stage2" / f"{name}-accum2-seed{key[1]}"
        wanted = label in args.points and (not args.data or key[0] in args.data)
        if runner is not None and wanted:
            runner.run(curve, steps, key[1], 2, out)
        if (out / "stage2" / "summary.json").is_file():
            masks[(*key, label)] = tail_scores(out, ScoreConfig().stage2.tail_fraction)

    # A recording where the default rule never fires has no T: it is left out of every
    # comparison "at T"; the snapshot standing in for T is its last, so it counts there.
    for key in recordings:
        if default_t[key] is None and (*key, "T") in masks:
            masks[(*key, "last")] = masks[(*key, "T")]
    valid = {
        "T": [key for key in recordings if default_t[key] is not None],
        "end": list(recordings),
        "last": [key for key in recordings if key in last or default_t[key] is None],
    }

    def at(point: str, keys: list[tuple[str, int]]) -> list[tuple[str, int]]:
        return [key for key in keys if key in valid[point]]

    def pair_row(label: str, pairs: list[tuple[list[float], list[float]]]) -> str:
        return overlap_row(label, pairs, names, types, chance)

    datasets = sorted({d for d, _ in recordings})
    overlap_rows = [
        "| comparison | pairs | top-25% Jaccard mean (range) | structural null | "
        "chance | Spearman |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for data in datasets:
        keys = [key for key in recordings if key[0] == data]
        name = data if data in TUNING else f"{data} (untouched)"
        # Only where T comes before the late snapshot (else the two are one mask).
        before_end = [key for key in keys if use_end and steps_used[key][0] < steps_used[key][1]]
        if before_end:
            overlap_rows.append(
                pair_row(
                    f"{name}: mask at T vs at the end (same run)",
                    [(masks.get((*key, "T")), masks.get((*key, "end"))) for key in before_end],
                )
            )
        for key in keys:
            run = f"{name} seed {key[1]}"
            if key in doubled:
                overlap_rows.append(
                    pair_row(
                        f"{run}: mask at T vs at 2T (step {doubled[key]}; same run)",
                        [(masks.get((*key, "T")), masks.get((*key, "2T")))],
                    )
                )
            if key not in last:
                continue
            epochs = last[key] / recordings[key]["steps_per_epoch"]
            overlap_rows.append(
                pair_row(
                    f"{run}: mask at T vs at step {last[key]} ({epochs:.2f} epoch"
                    + ("; = 2T" if key in last_is_2t else "")
                    + "; same run)",
                    [(masks.get((*key, "T")), masks.get((*key, "last")))],
                )
            )
            later = [(steps_used[key][1], "end")] if key in before_end else []
            later += [(doubled[key], "2T")] if key in doubled else []
            for step, point in later:
                overlap_rows.append(
                    pair_row(
                        f"{run}: mask at step {step} vs at step {last[key]} (same run)",
                        [(masks.get((*key, point)), masks.get((*key, "last")))],
                    )
                )
        for point in compared:
            pairs = [
                (masks.get((*a, point)), masks.get((*b, point)))
                for a, b in itertools.combinations(at(point, keys), 2)
            ]
            if pairs:
                overlap_rows.append(pair_row(f"{name}: seed vs seed, at {point}", pairs))
        # Does a longer stage 1 make seeds agree more? (Each run's own last snapshot.)
        pairs = [
            (masks.get((*a, "last")), masks.get((*b, "last")))
            for a, b in itertools.combinations(at("last", keys), 2)
        ]
        if pairs:
            overlap_rows.append(pair_row(f"{name}: seed vs seed, at the last snapshot", pairs))
        for point in compared:
            averaged = [key for key in keys if (*key, f"{point}-avg") in masks]
            if not averaged:
                continue
            window = windows[(averaged[0], f"{point}-avg")]
            span = f"LoRA averaged over steps {window[0]}-{window[-1]}"
            overlap_rows.append(
                pair_row(
                    f"{name}: {span} vs last iterate (same run)",
                    [(masks.get((*key, f"{point}-avg")), masks.get((*key, point))) for key in keys],
                )
            )
            pairs = [
                (masks.get((*a, f"{point}-avg")), masks.get((*b, f"{point}-avg")))
                for a, b in itertools.combinations(keys, 2)
            ]
            overlap_rows.append(pair_row(f"{name}: seed vs seed, at {point}, {span}", pairs))
    for point in compared:
        pairs = [
            (masks.get((*a, point)), masks.get((*b, point)))
            for a, b in itertools.combinations(at(point, list(recordings)), 2)
            if a[0] != b[0] and {a[0], b[0]} <= TUNING
        ]
        if pairs:
            overlap_rows.append(pair_row(f"cross-dataset, at {point}", pairs))
    pairs = [
        (masks.get((*a, "last")), masks.get((*b, "last")))
        for a, b in itertools.combinations(at("last", list(recordings)), 2)
        if a[0] != b[0] and {a[0], b[0]} <= TUNING
    ]
    if pairs:
        overlap_rows.append(pair_row("cross-dataset, each at its last snapshot", pairs))
    # The same comparisons for the stage-1 update norms ||Delta_i|| at T (the ranking the
    # `lora-norm` scorer gives on the same adapters): the reference the gates must beat.
    norm_at_t = {
        key: curve["norms"].get(str(steps_used[key][0])) for key, curve in recordings.items()
    }
    for data in datasets:
        keys = [key for key in recordings if key[0] == data]
        pairs = [(norm_at_t[a], norm_at_t[b]) for a, b in itertools.combinations(at("T", keys), 2)]
        if pairs:
            overlap_rows.append(pair_row(f"{data}: seed vs seed, update norms at T", pairs))
    pairs = [
        (norm_at_t[a], norm_at_t[b])
        for a, b in itertools.combinations(at("T", list(recordings)), 2)
        if a[0] != b[0] and {a[0], b[0]} <= TUNING
    ]
    if pairs:
        overlap_rows.append(pair_row("cross-dataset, update norms at T", pairs))
    # Block view (docs/method.md, "Unit"): block score = mean gate of its modules.
    blocks = sorted({int(name.split(".")[1]) for name in names})
    block_of = [int(name.split(".")[1]) for name in names]

    def block_view(raw: list[float] | None) -> list[float] | None:
        if raw is None:
            return None
        gates = [1 / (1 + math.exp(-x)) for x in raw]
        return [
            statistics.fmean(g for g, b in zip(gates, block_of, strict=True) if b == block)
            for block in blocks
        ]

    kb = top_count(len(blocks), FRACTION)
    block_rows = [
        f"Block view ({len(blocks)} blocks, top 25% = {kb} blocks, chance "
        f"{expected_random_jaccard(len(blocks), kb):.2f}; block score = mean gate of its "
        "modules):",
        "",
        "| comparison | pairs | top-25% Jaccard of blocks, mean (range) |",
        "|---|---:|---:|",
    ]
    block_pairs = {
        f"{data}: seed vs seed, at T": [
            (a, b)
            for a, b in itertools.combinations(at("T", list(recordings)), 2)
            if a[0] == b[0] == data
        ]
        for data in datasets
    }
    block_pairs["cross-dataset, at T"] = [
        (a, b)
        for a, b in itertools.combinations(at("T", list(recordings)), 2)
        if a[0] != b[0] and {a[0], b[0]} <= TUNING
    ]
    for label, keys in block_pairs.items():
        views = [
            (block_view(masks.get((*a, "T"))), block_view(masks.get((*b, "T")))) for a, b in keys
        ]
        js = [
            len(top(x, FRACTION) & top(y, FRACTION)) / len(top(x, FRACTION) | top(y, FRACTION))
            for x, y in views
            if x is not None and y is not None
        ]
        if js:
            block_rows.append(
                f"| {label} | {len(js)} | {statistics.fmean(js):.2f} ({min(js):.2f}-"
                f"{max(js):.2f}) |"
            )
    norm_rows = []
    for key, curve in recordings.items():
        at_t = steps_used[key][0]
        norms = curve["norms"].get(str(at_t))
        if norms and (*key, "T") in masks:
            norm_rows.append(f"{key[0]} seed {key[1]}: {spearman(masks[(*key, 'T')], norms):.2f}")

    # 4. Stage-2 variants on one adapter.
    variant_rows = []
    if not args.skip_variants:
        key = min(recordings, key=lambda k: (k[0] != "ila-instruct", k))
        curve = recordings[key]
        step = steps_used[key][0]
        variant_rows = [
            "| gradient accumulation (examples per step) | tail | stage-2 seeds | "
            "same-adapter top-25% Jaccard mean (range) | s/step |",
            "|---|---|---:|---:|---:|",
        ]
        for accum in args.accums:
            outs = []
            for seed in args.variant_seeds:
                out = curve["dir"] / "stage2" / f"step-{step}-accum{accum}-seed{seed}"
                if runner is not None and (not args.data or key[0] in args.data):
                    runner.run(curve, (step,), seed, accum, out)
                if (out / "stage2" / "summary.json").is_file():
                    summary = json.loads((out / "stage2" / "summary.json").read_text())
                    outs.append((out, summary["seconds_per_step"]))
            if len(outs) < 2:
                continue
            for tail in (0.0, 0.2, 0.4):
                scores = [tail_scores(o, tail) for o, _ in outs]
                js = [jaccard(top(a), top(b)) for a, b in itertools.combinations(scores, 2)]
                sec = statistics.fmean(s for _, s in outs)
                label = "last step" if tail == 0 else f"mean s over last {tail:.0%}"
                variant_rows.append(
                    f"| {accum} ({4 * accum}) | {label} | {len(outs)} | "
                    f"{statistics.fmean(js):.2f} ({min(js):.2f}-{max(js):.2f}) | {sec:.2f} |"
                )
        variant_rows.insert(0, f"Adapter: {key[0]} seed {key[1]} at step {step}.\n")

    # `--precision auto` picks bf16 autocast on CPUs with AVX512-BF16 or AMX: the precision
    # is what each recording stored (stage 2 ran in the same), never assumed.
    stored = sorted({str(c.get("precision", "not recorded")) for c in recordings.values()})
    precision_text = (
        "precision "
        + " and ".join({"bf16": "bf16 autocast", "fp32": "float32"}.get(p, p) for p in stored)
        + " (stage 1 and stage 2)"
    )
    protocol = (
        f"SmolLM2-135M, {precision_text}, 2-core CPU. Clean protocol: max length {MAX_LENGTH} for "
        f"every dataset, train/held-out split seed {SPLIT_SEED} (apart from the training "
        "seed), batch 4, LoRA r 8 / alpha 16 / lr 1e-3 constant after 5 warm-up steps; "
        + "; ".join(f"{d} limited to its first {n} conversations" for d, n in sorted(LIMIT.items()))
        + ". Each recording "
        "runs stage 1 to a fixed number of steps without a rule; every rule is applied to "
        "the same curves. Stage 2 uses the current defaults (60 steps, hinge H 0.5, "
        "accumulation 2, eval mode, own data order, importance = s averaged over the last "
        f"20% of steps). Top 25%: k = {k} of {n} units, chance {chance:.3f}. "
    )
    if any(point.endswith("-avg") for point in args.points):
        protocol += (
            "'LoRA averaged' rows learn stage 2 from the mean of the LoRA A and B matrices of "
            f"the last {args.average_snapshots} snapshots up to that point (a tail average of "
            "the stage-1 iterates at the constant learning rate; review lever I2), with the "
            "same stage-2 seed as the last-iterate row; only points with a finished stage 2 "
            "are shown. "
        )
    protocol += (
        f"Settings were chosen on {' and '.join(sorted(TUNING))} only; other datasets are "
        "untouched checks, left out of the cross-dataset rows."
    )
    recorded = "; ".join(
        f"{d} seed {sd}: {len(c['loss'])} steps" for (d, sd), c in sorted(recordings.items())
    )
    command = f"python benchmarks/bench_stability.py --work-dir {args.work_dir}"
    if args.points != parser.get_default("points"):
        command += " --points " + " ".join(args.points)
    if args.skip_variants:
        command += " --skip-variants"
    if args.section != parser.get_default("section"):
        command += f" --section {args.section} --title '{args.title}'"
    protocol += (
        f" Recordings: {recorded} (`benchmarks/record_stage1.py`). Command: `{command}` "
        "(stage-2 runs already in the work dir are reused; `--report-only` reports them "
        "without running more). Times per step were measured with other jobs on the machine."
    )
    no_t = {
        key: "" if key in valid["T"] else " (no T within the recording: its last snapshot)"
        for key in recordings
    }
    lines = [
        f"## {args.title} (`benchmarks/bench_stability.py`)",
        "",
        protocol,
        "",
        "### T of each stopping rule",
        "",
        *t_rows,
        "",
        "### Overlap at T and at the end of the recording",
        "",
        (
            "Stage-1 snapshots used (T rounded up to the 20-step snapshot grid; 'end' is the "
            "last snapshot every recording has): "
            + "; ".join(
                f"{d} seed {s}: {a}{no_t[(d, s)]}, {b}" for (d, s), (a, b) in steps_used.items()
            )
            if use_end
            else "Stage-1 snapshots used at T (rounded up to the 20-step snapshot grid): "
            + "; ".join(f"{d} seed {s}: {a}{no_t[(d, s)]}" for (d, s), (a, _) in steps_used.items())
        )
        + (
            "; each recording's own last snapshot, where later: "
            + ", ".join(f"{d} seed {s}: {step}" for (d, s), step in last.items())
            if last
            else ""
        ),
        "",
        *overlap_rows,
        "",
        *block_rows,
        "",
        "Spearman of the ILA importance (at T) with the stage-1 update norms ||Delta_i|| of the "
        "same adapter (what the `lora-norm` scorer ranks by): " + "; ".join(norm_rows) + ".",
    ]
    if variant_rows:
        lines += ["", "### Stage 2 on one adapter: batch and tail averaging", "", *variant_rows]
    markdown = "\n".join(lines)
    write_section(args.section, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
