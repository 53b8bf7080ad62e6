"""What ILA costs against the fine-tune it informs, what selective tuning saves, and how
close each step comes to the machine's matmul limit.

ILA (arXiv 2410.17875; docs/method.md) spends stage 1 (LoRA on every unit until
epsilon-stable, T steps) and stage 2 (the gates, a fixed number of steps, each of
``--stage2-grad-accum`` micro-batches) before the fine-tune it informs. This script
measures, on the model and data of the ILA runs given, each configuration in its own
`ila` process at the same thread count and precision, the median step time and peak
memory of:

* ILA stage 1 and stage 2 (`ila score` capped at ``--steps`` steps of each);
* LoRA fine-tuning of every unit, of ILA's top 30%, of all but ILA's bottom 25% and of
  the upper 30% of the blocks;
* full fine-tuning of every unit and of ILA's top 30%.

Processes that run one after the other on a shared machine also measure what else ran at
the time, so the fine-tune configurations are timed again in this process, side by side
(``step_timing.alternate``: a few steps each, in turn, for ``--rounds`` rounds; CPU time
per step, ratios taken per batch), and the full fine-tunes of every unit and of the top
30% are profiled op by op (``torch.profiler``). In this process it then counts, with
``torch.utils.flop_counter``, the FLOPs of one forward and one backward pass of each
configuration built as ila builds it (``add_lora``, ``freeze_all_but``, ``attach_gates``)
on a batch of the runs' mean padded length. The backward count shows whether autograd
stops at the lowest trainable unit; divided by the step time it gives the achieved
FLOP/s, put beside the fp32 and bf16 matmul rate of this machine measured here (the
roofline). Finally it reads the stage-1 and stage-2 step times of the finished ILA runs
(per micro-batch, so a stage-2 step that costs more than its micro-batches explain shows
up) and puts ILA's whole cost against fine-tunes of one and three epochs. Usage::

    python benchmarks/bench_cost.py --ila-runs runs/bench-overlap/ila-instruct/seed0 ... \\
        [--steps 20] [--threads 1] [--precision fp32] [--rounds 3] [--round-steps 6]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ila_process import ila
from results_file import write_section
from run_settings import run_flags

BASE, FULL_ALL, FULL_TOP = "LoRA, all units", "full, all units", "full, ILA top 30%"
RUNS = {
    BASE: ["--all-units", "--method", "lora"],
    "LoRA, ILA top 30%": ["--tune-top-fraction", "0.3", "--method", "lora"],
    "LoRA, ILA bottom 25% frozen": ["--freeze-bottom-fraction", "0.25", "--method", "lora"],
    FULL_ALL: ["--all-units", "--method", "full"],
    FULL_TOP: ["--tune-top-fraction", "0.3", "--method", "full"],
}
STAGE1, STAGE2 = "ILA stage 1 (LoRA, all units)", "ILA stage 2 (gates)"
OPS_SHOWN = 8


def step_seconds(metrics: Path, stage: str) -> float:
    """Median seconds per step of ``stage`` (first step dropped: warm-up)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    elapsed = [r["elapsed_s"] for r in rows if r["stage"] == stage]
    gaps = [b - a for a, b in itertools.pairwise(elapsed)][1:]
    if not gaps:
        raise SystemExit(f"{metrics}: too few {stage} steps to time")
    return statistics.median(gaps)


def matmul_rate(dtype, m: int, k: int, n: int, seconds: float = 2.0) -> float:
    """GFLOP per CPU second of an (m x k) @ (k x n) matmul in ``dtype``, repeated for about
    ``seconds`` of CPU time (CPU time, as the side-by-side step times: waits for a core on
    a shared machine are not the matmul's)."""
    import torch

    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    torch.matmul(a, b)
    count, start = 0, time.process_time()
    while time.process_time() - start < seconds:
        torch.matmul(a, b)
        count += 1
    return 2 * m * k * n * count / (time.process_time() - start) / 1e9


def mean_padded_length(lengths: list[int], batch: int, draws: int = 4000) -> float:
    """Mean longest length of ``batch`` random examples: the padded length of a step."""
    rng = random.Random(0)
    return statistics.fmean(max(rng.sample(lengths, batch)) for _ in range(draws))


def pass_flops(model, input_ids) -> tuple[int, int]:
    """FLOPs of one forward and of one backward pass (loss = next-token loss on the batch)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as forward:
        loss = model(input_ids=input_ids, labels=input_ids).loss
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    return forward.get_total_flops(), backward.get_total_flops()


def build(base, layer_map, lora, name: str, chosen: list[str]):
    """Fine-tune configuration ``name`` on a copy of ``base``, as `ila finetune` builds it:
    the chosen units' own weights trainable ("full ...") or LoRA on them."""
    from ila.core.lora import add_lora
    from ila.jobs.finetune import freeze_all_but

    model = copy.deepcopy(base)
    if name.startswith("full"):
        freeze_all_but(model, layer_map, set(chosen), train_embeddings=False)
        return model
    return add_lora(model, [layer_map.unit(n) for n in chosen], lora, seed=0)


def count_flops(base, layer_map, lora, selections: dict[str, list[str]], ids):
    """Per configuration: (forward FLOPs, backward FLOPs, lowest trainable block / blocks)."""
    from ila.core.gates import attach_gates

    every = [u.name for u in layer_map.units]
    counted = {}
    for name, chosen in {STAGE1: every, STAGE2: every, **selections}.items():
        model = build(base, layer_map, lora, name, chosen)
        if name == STAGE2:
            for param in model.parameters():
                param.requires_grad_(False)
            attach_gates(model, layer_map)
            model.eval()
        forward, backward = pass_flops(model, ids)
        lowest = min(layer_map.unit(n).block for n in chosen)
        counted[name] = (forward, backward, lowest / layer_map.num_blocks)
        del model
    return counted


def recorded_precision(run: Path) -> str:
    """The precision an `ila` run trained in (its environment.json)."""
    return json.loads((run / "environment.json").read_text())["precision"]["precision"]


def run_processes(args, config: dict, flags: list[str]) -> dict[str, Any]:
    """Each configuration in its own `ila` process (reused when already in the work dir):
    own-process wall step times, peak memory, trainable parameters, selections."""
    work, steps = args.work_dir, str(args.steps)
    score_dir = work / "score"
    if not (score_dir / "layer_scores.json").is_file():
        ila(
            "score", "--output-dir", str(score_dir), "--overwrite", *flags,
            "--stage1-max-steps", steps, "--stage1-min-steps", steps, "--stage2-steps", steps,
        )  # fmt: skip
    out: dict[str, Any] = {"memory": {}, "params": {}, "selections": {}}
    out["timing"] = {
        STAGE1: step_seconds(score_dir / "metrics.jsonl", "stage1"),
        STAGE2: step_seconds(score_dir / "metrics.jsonl", "stage2"),
    }
    precisions = {recorded_precision(score_dir)}
    # The selection whose backward can stop highest: LoRA on the upper 30% of the blocks.
    blocks = int(
        json.loads((args.ila_runs[0] / "layer_scores.json").read_text())["layout"]["num_blocks"]
    )
    upper = range(blocks - round(0.3 * blocks), blocks)
    runs = {
        **RUNS,
        f"LoRA, upper 30% of blocks ({upper[0]}-{upper[-1]})": [
            "--blocks", ",".join(map(str, upper)), "--method", "lora",
        ],
    }  # fmt: skip
    for name, rule in runs.items():
        run = work / ("ft-" + "".join(c if c.isalnum() else "-" for c in name))
        ranked = "--tune-top-fraction" in rule or "--freeze-bottom-fraction" in rule
        scores = ["--scores", str(args.ila_runs[0])] if ranked else []
        if not (run / "finetune_summary.json").is_file():
            ila("finetune", *rule, *scores, "--max-steps", steps, "--output-dir", str(run),
                "--overwrite", *flags)  # fmt: skip
        summary = json.loads((run / "finetune_summary.json").read_text())
        out["timing"][name] = step_seconds(run / "metrics.jsonl", "finetune")
        out["memory"][name] = summary["peak_rss_mb"]
        out["params"][name] = summary["trainable_parameters"]
        out["selections"][name] = json.loads((run / "selection.json").read_text())["selected"]
        precisions.add(recorded_precision(run))
    if len(precisions) != 1:
        raise SystemExit(
            f"the runs under {work} trained in different precisions ({', '.join(precisions)}); "
            "remove them or pass another --work-dir"
        )
    out["precision"] = precisions.pop()
    return out


def measure_here(args, config: dict, selections: dict[str, list[str]], precision: str):
    """In this process: the fine-tunes side by side, the op profiles of the two full
    fine-tunes, the FLOPs of every configuration and the matmul rates."""
    import torch

    from ila.config import LoraSettings, TrainConfig
    from ila.core.layers import find_layers
    from ila.data import PaddingCollator, load_examples, split_examples, tokenize_examples
    from ila.model.loading import load_model, load_model_config
    from step_timing import alternate, alternate_profiles

    torch.set_num_threads(args.threads)
    model_name, data_cfg = str(config["model"]["model"]), config["data"]
    base, tokenizer = load_model(model_name, device="cpu")
    layer_map = find_layers(base)
    lora = LoraSettings(**{k: v for k, v in config["lora"].items() if k != "module_types"})
    examples = load_examples(str(data_cfg["data"]), limit=data_cfg.get("limit"))
    train, _ = split_examples(
        examples, eval_fraction=data_cfg["eval_fraction"], seed=data_cfg["split_seed"]
    )
    features = tokenize_examples(train, tokenizer, max_length=data_cfg["max_length"]).features
    batch = int(config["train"]["batch_size"])
    data = (features, PaddingCollator(tokenizer.pad_token_id))
    trainer_cfg = TrainConfig(batch_size=batch, precision=precision, seed=0)
    work = args.work_dir / "in-process"

    def configuration(name: str):
        return build(base, layer_map, lora, name, selections[name])

    here: dict[str, Any] = {}
    here["alternating"] = alternate(
        configuration, list(selections), data, trainer_cfg,
        rounds=args.rounds, steps=args.round_steps, work=work,
    )  # fmt: skip
    here["profiles"] = alternate_profiles(
        configuration, [FULL_ALL, FULL_TOP], data, trainer_cfg, rounds=args.rounds, work=work
    )
    here["padded"] = mean_padded_length([len(f["input_ids"]) for f in features], batch)
    length = round(here["padded"])
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, base.config.vocab_size, (batch, length), generator=generator)
    here["flops"] = count_flops(base, layer_map, lora, selections, ids)
    shape = load_model_config(model_name)
    hidden, inner = int(shape.hidden_size), int(shape.intermediate_size)
    here["rates"] = {
        "fp32, 2048 x 2048 x 2048": matmul_rate(torch.float32, 2048, 2048, 2048),
        "bf16, 2048 x 2048 x 2048": matmul_rate(torch.bfloat16, 2048, 2048, 2048),
        f"fp32, ({batch} x {length}) x {hidden} x {inner} (an MLP matmul)": matmul_rate(
            torch.float32, batch * length, hidden, inner
        ),
    }
    return here


def cpu_line() -> str:
    """The CPU model and whether it has bf16 matrix instructions (ila.train.precision)."""
    from ila.train.precision import cpu_has_bf16

    names = [
        line.partition(":")[2].strip()
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
        if line.startswith("model name")
    ]
    model = names[0] if names else "unknown CPU"
    return f"{os.cpu_count()} cores of {model} ({'with' if cpu_has_bf16() else 'without'} bf16)"


def step_table(measured: dict, here: dict, grad_accum: int) -> list[str]:
    """The table of step time, memory and FLOPs per configuration."""
    timing, alternating, flops = measured["timing"], here["alternating"], here["flops"]
    precision = measured["precision"]
    peak = here["rates"][f"{'bf16' if precision == 'bf16' else 'fp32'}, 2048 x 2048 x 2048"]
    lines = [
        "| what | own process: s/step | own process: vs LoRA all units | alternating: CPU "
        "s/step | alternating: vs LoRA all units | peak RSS (MB) | trainable params | below "
        f"| bwd/fwd | GFLOP/step | GFLOP per CPU s | % of {precision} peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, seconds in timing.items():
        forward, backward, below = flops[name]
        per_step = (forward + backward) * (grad_accum if name == STAGE2 else 1) / 1e9
        mem = f"{measured['memory'][name]:.0f}" if name in measured["memory"] else "-"
        count = f"{measured['params'][name]:,}" if name in measured["params"] else "-"
        here_cols = "- | -"
        rate_cols = "- | -"
        if name in alternating.cpu:
            cpu = alternating.median(name)
            here_cols = f"{cpu:.2f} | {alternating.ratio(name, BASE):.2f}"
            rate_cols = f"{per_step / cpu:.1f} | {100 * per_step / cpu / peak:.0f}%"
        lines.append(
            f"| {name} | {seconds:.2f} | {seconds / timing[BASE]:.2f} | {here_cols} | {mem} | "
            f"{count} | {below:.0%} | {backward / forward:.2f} | {per_step:.1f} | {rate_cols} |"
        )
    return lines


def op_rows(profiles: dict[str, dict[str, tuple[float, float]]]) -> list[str]:
    """The ops whose time differs most between the two full fine-tunes, and the totals."""
    mine, theirs = profiles[FULL_TOP], profiles[FULL_ALL]
    zero = (0.0, 0.0)
    keys = sorted(
        {k for k in (*mine, *theirs) if k.startswith("aten::")},
        key=lambda k: -abs(mine.get(k, zero)[0] - theirs.get(k, zero)[0]),
    )
    lines = [
        f"| op | {FULL_ALL}: calls | ms | {FULL_TOP}: calls | ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for key in keys[:OPS_SHOWN]:
        (a_ms, a_n), (b_ms, b_n) = theirs.get(key, zero), mine.get(key, zero)
        lines.append(f"| `{key}` | {a_n:.0f} | {a_ms:.0f} | {b_n:.0f} | {b_ms:.0f} |")
    total = [sum(v[0] for v in p.values()) for p in (theirs, mine)]
    lines.append(f"| all ops | | {total[0]:.0f} | | {total[1]:.0f} |")
    return lines


def full_lines(measured: dict, here: dict, rounds: int) -> list[str]:
    """Why one full fine-tune measures slower or faster than the other, with the evidence."""
    timing, alternating, flops = measured["timing"], here["alternating"], here["flops"]
    own = timing[FULL_TOP] / timing[FULL_ALL]
    alt = alternating.ratio(FULL_TOP, FULL_ALL)
    per_round = alternating.round_ratios(FULL_TOP, FULL_ALL)
    flop = sum(flops[FULL_TOP][:2]) / sum(flops[FULL_ALL][:2])
    walls = [statistics.median(r) for r in alternating.wall[FULL_ALL]]
    cpus = [statistics.median(r) for r in alternating.cpu[FULL_ALL]]
    mm = [here["profiles"][n].get("aten::mm", (0.0, 0.0))[1] for n in (FULL_ALL, FULL_TOP)]
    grads = [
        here["profiles"][n].get("torch::autograd::AccumulateGrad", (0.0, 0.0))[1]
        for n in (FULL_ALL, FULL_TOP)
    ]
    lines = [
        f"### {FULL_TOP} against {FULL_ALL}",
        "",
        f"Step of the top 30% over the step of every unit: {own:.2f} in their own processes "
        f"(wall time), {alt:.2f} side by side in one process (CPU time, per batch; rounds: "
        + ", ".join(f"{r:.2f}" for r in per_round)
        + f"); FLOPs {flop:.2f}. Within this one process the all-units step's median per "
        f"round ran {min(walls):.2f}-{max(walls):.2f} s of wall time and "
        f"{min(cpus):.2f}-{max(cpus):.2f} s of CPU time. Per step the top 30% makes "
        f"{mm[1]:.0f} matmul calls against {mm[0]:.0f} (no weight gradient for a frozen unit) "
        f"and accumulates {grads[1]:.0f} parameter gradients against {grads[0]:.0f} (a "
        "frozen weight gets none, and Adam updates only the trained ones).",
    ]
    if alt < 1 <= own and max(per_round) < 1:
        lines += [
            "",
            "Side by side the top-30% step is the cheaper one in every round, as its FLOPs "
            "say, while in their own processes it measured slower: that ordering came from "
            "the load on the shared machine when each process ran, not from the configuration.",
        ]
    lines += [
        "",
        "ATen ops of one step (`torch.profiler`: one step after a warm-up step, each "
        f"configuration in turn for {rounds} rounds, averaged; "
        "self time scaled to the steps' CPU time, an estimate per op; the ops whose time "
        "differs most):",
        "",
        *op_rows(here["profiles"]),
    ]
    return lines


def stage_lines(args, measured: dict, metas: list[dict], grad_accum: int) -> list[str]:
    """Stage 2 against stage 1 per micro-batch: this run's capped stages and the ILA runs."""
    timing = measured["timing"]
    lines = [
        "### Stage 2 against stage 1 in the finished ILA runs",
        "",
        "A stage-2 step does the forward and backward of its micro-batches with no LoRA weight "
        "gradient, so per micro-batch it should cost no more than a stage-1 step. Ratios well "
        "above 1 mean something else costs time in stage 2 (the check the capped run above "
        "cannot make on its own).",
        "",
        "| ILA run | T | stage 1 s/step | stage 2 s/step | micro-batches | stage 2 per "
        "micro-batch / stage 1 |",
        "|---|---:|---:|---:|---:|---:|",
        f"| capped run above | {args.steps} | {timing[STAGE1]:.2f} | {timing[STAGE2]:.2f} | "
        f"{grad_accum} | {timing[STAGE2] / grad_accum / timing[STAGE1]:.2f} |",
    ]
    for run, meta in zip(args.ila_runs, metas, strict=True):
        s1 = step_seconds(run / "metrics.jsonl", "stage1")
        s2 = step_seconds(run / "metrics.jsonl", "stage2")
        micro = int(meta["stage2"].get("grad_accum", 1))
        lines.append(
            f"| `{run}` | {meta['T']} | {s1:.2f} | {s2:.2f} | {micro} | {s2 / micro / s1:.2f} |"
        )
    return lines


def cost_lines(args, measured: dict, here: dict, metas: list[dict], config: dict) -> list[str]:
    """ILA's whole cost against fine-tunes of one and three epochs."""
    timing = measured["timing"]
    batch = int(config["train"]["batch_size"])
    epoch = json.loads((args.ila_runs[0] / "data.json").read_text())["num_train_features"] / batch
    t_steps = statistics.fmean(m["stage1_steps"] for m in metas)
    stage2_steps = statistics.fmean(m["stage2_steps"] for m in metas)
    ila_cost = t_steps * timing[STAGE1] + stage2_steps * timing[STAGE2]
    base = timing[BASE]
    top = base * here["alternating"].ratio("LoRA, ILA top 30%", BASE)
    lines = [
        "### ILA's cost against the fine-tune",
        "",
        f"Stage 1 ran T = {t_steps:.0f} steps on average and stage 2 {stage2_steps:.0f} steps "
        f"in the ILA runs given ({len(metas)}), so about {ila_cost:.0f} s at the own-process "
        f"step times above, or {ila_cost / base:.0f} steps of LoRA on all units. A step of LoRA "
        f"on the top 30% is taken as {top:.2f} s: the all-units step of its own process times "
        "the side-by-side ratio. One epoch of this data is "
        f"{epoch:.0f} steps at batch {batch}. With `--init-from-stage1` the T stage-1 steps "
        "also start the fine-tune (`bench_warm_start` measures what that is worth).",
        "",
        "| fine-tune informed | LoRA all units (s) | LoRA top 30% (s) | ILA + LoRA top 30% (s) "
        "| ILA as % of the all-units fine-tune |",
        "|---|---:|---:|---:|---:|",
    ]
    for epochs in (1, 3):
        n = epochs * epoch
        lines.append(
            f"| {epochs} epoch{'s' if epochs > 1 else ''} ({n:.0f} steps) | {n * base:.0f} | "
            f"{n * top:.0f} | {ila_cost + n * top:.0f} | {100 * ila_cost / (n * base):.0f}% |"
        )
    saved = base - top
    if saved > 0:
        lines += [
            "",
            f"Tuning the top 30% saves {saved:.2f} s per step here, so ILA pays for itself in "
            f"time after about {ila_cost / saved:.0f} fine-tuning steps "
            f"({ila_cost / saved / epoch:.1f} epochs); shorter fine-tunes cost more with ILA "
            "than without it.",
        ]
    else:
        lines += ["", "Tuning the top 30% was not faster per step here: ILA never pays back."]
    return lines


def header_lines(args, config: dict, measured: dict, here: dict, started: str) -> list[str]:
    """The section's title, conditions, command and how the FLOPs were counted."""
    data_cfg, length = config["data"], round(here["padded"])
    batch, grad_accum = int(config["train"]["batch_size"]), int(config["stage2"]["grad_accum"])
    command = (
        f"python benchmarks/bench_cost.py --threads {args.threads} --precision {args.precision} "
        f"--steps {args.steps} --rounds {args.rounds} --round-steps {args.round_steps} "
        "--ila-runs " + " ".join(str(r) for r in args.ila_runs)
    )
    return [
        "## Cost: ILA against the fine-tune it informs (`benchmarks/bench_cost.py`)",
        "",
        f"Measured {started} on {cpu_line()}, {args.threads} thread(s) for every measurement, "
        f"precision {measured['precision']}, `{config['model']['model']}`, "
        f"`{data_cfg['data']}` (max length {data_cfg['max_length']}, batch {batch}, mean padded "
        f"length of a batch {here['padded']:.1f} tokens). Own process: each configuration in "
        f"its own `ila` process, {args.steps} steps, median wall time per step after the first. "
        f"Alternating: the fine-tunes again in one process, {args.round_steps} steps each in "
        f"turn for {args.rounds} rounds (order rotated), median CPU time per step after each "
        "run's first; its ratios are medians of per-step ratios on the same batch. Command: "
        f"`{command}`." + (f" {args.note}" if args.note else ""),
        "",
        "### Step time, memory and FLOPs per configuration",
        "",
        "FLOPs: `torch.utils.flop_counter` on one pass of the configuration as ila builds it, "
        f"batch {batch} x {length} tokens (matmuls and attention; element-wise work is not "
        f"counted). A stage-2 step is {grad_accum} micro-batches (`--stage2-grad-accum`); its "
        "FLOPs count all of them. GFLOP per CPU second of the alternating measurement (not "
        "measured for the ILA stages, whose wall time carries the machine's load). 'below' is "
        "the share of "
        "blocks under the lowest trainable unit, where no gradient needs computing; 'bwd/fwd' "
        "is backward FLOPs over forward FLOPs (about 1 when every block's input gradient is "
        "computed and no weight gradient, about 2 with every weight gradient).",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ila-runs", type=Path, nargs="+", required=True)
    parser.add_argument("--steps", type=int, default=20, help="steps of each own-process run")
    parser.add_argument("--threads", type=int, default=1, help="threads of every measurement")
    parser.add_argument(
        "--precision", default="fp32", choices=["fp32", "bf16", "auto"],
        help="training precision of every measurement (ila's --precision)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the side-by-side timing")
    parser.add_argument(
        "--round-steps", type=int, default=6, help="steps per configuration and round"
    )
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-cost"))
    parser.add_argument("--note", default="", help="conditions worth stating with the numbers")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    config = yaml.safe_load((args.ila_runs[0] / "config.yaml").read_text())
    flags = [*run_flags(config, args.threads), "--seed", "0", "--precision", args.precision]
    grad_accum = int(config["stage2"]["grad_accum"])
    metas = [json.loads((r / "layer_scores.json").read_text())["meta"] for r in args.ila_runs]

    measured = run_processes(args, config, flags)
    here = measure_here(args, config, measured["selections"], measured["precision"])
    lines = [
        *header_lines(args, config, measured, here, started),
        "",
        *step_table(measured, here, grad_accum),
        "",
        "Matmul rate of this machine, measured in the same run at the same thread count, per "
        "CPU second (the roofline the FLOP rates above are put against):",
        "",
        "| matmul | GFLOP per CPU s |",
        "|---|---:|",
        *(f"| {name} | {rate:.1f} |" for name, rate in here["rates"].items()),
        "",
        *full_lines(measured, here, args.rounds),
        "",
        *stage_lines(args, measured, metas, grad_accum),
        "",
        *cost_lines(args, measured, here, metas, config),
    ]
    markdown = "\n".join(lines)
    write_section("bench_cost", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
