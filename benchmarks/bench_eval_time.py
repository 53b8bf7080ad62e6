"""Evaluation time of this checkout against an earlier commit, side by side in one process.

The machine this runs on is shared and noisy, so the versions are timed alternately in
one process, on the same model and examples, round after round, with one thread (two
threads on a loaded 2-core machine wait on each other at every small op and vary by
several times); the ratios of their medians are the result, not the seconds. The earlier
``ila.evaluation`` is loaded from ``git show REF:src/ila/evaluation/__init__.py`` as a
module of its own.

Per variant (the base model; the base plus a LoRA on every unit, the all-units baseline
of `ila run`, with random B so that the update is not zero) and phase (held-out loss,
greedy answers), on the 60 held-out examples of ila-instruct at max length 96 (the demo's
split), 8 greedy answers of at most 24 tokens, batch 8:

* ``before``: the earlier code on the model as it loaded it (a LoRA as a peft model);
* ``after``: this code on the model as it loads it now (a float32 LoRA merged), same
  settings: what the code changes alone gain;
* ``demo``: ``after`` with the evaluation settings of examples/demo.yaml (it may
  evaluate fewer examples): what `make demo` gains.

    python benchmarks/bench_eval_time.py [--before cb17d1b] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def earlier_evaluation(ref: str) -> Any:
    """``ila.evaluation`` as it was at git ``ref``, as the module ``ila_eval_before``."""
    source = subprocess.run(
        ["git", "show", f"{ref}:src/ila/evaluation/__init__.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "ila_eval_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("ila_eval_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def lora_on_every_unit(base: Any) -> Any:
    """A peft LoRA (the default settings) on every unit of a copy of ``base``."""
    from ila.config import LoraSettings
    from ila.core.layers import find_layers
    from ila.core.lora import add_lora

    model = copy.deepcopy(base)
    model = add_lora(model, find_layers(model).units, LoraSettings(), seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.01 * torch.randn(param.shape, generator=generator))
    return model


def timed_phases(module: Any, model: Any, tokenizer: Any, examples: list, settings: Any) -> dict:
    """Seconds of the held-out loss and of the greedy answers (on the first
    ``max_examples`` examples, as an evaluation takes them), and what they gave."""
    from ila.data.tokenization import tokenize_examples

    chosen = examples[: settings.max_examples] if settings.max_examples else examples
    features = tokenize_examples(chosen, tokenizer, max_length=96, template="auto").features
    start = time.perf_counter()
    loss, _ = module.response_loss(
        model, features, pad_token_id=tokenizer.pad_token_id, batch_size=settings.batch_size
    )
    middle = time.perf_counter()
    generations, _ = module._generate_answers(
        model, tokenizer, chosen, settings, max_length=96, template="auto"
    )
    end = time.perf_counter()
    return {
        "loss_s": middle - start,
        "generate_s": end - middle,
        "loss": loss,
        "answers": [g["generation"] for g in generations],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="cb17d1b", help="git ref of the earlier code")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import ila.evaluation
    import ila.evaluation.evaluate
    from ila.api import make_config
    from ila.config import DataConfig, EvalConfig, EvalSettings
    from ila.data import load_split
    from ila.model.loading import load_model

    before_module = earlier_evaluation(args.before)
    # This code's two phases, under the names the earlier single module gave them.
    after_module = types.SimpleNamespace(
        response_loss=ila.evaluation.response_loss,
        _generate_answers=ila.evaluation.evaluate._generate_answers,
        merged_for_inference=ila.evaluation.merged_for_inference,
    )
    base, tokenizer = load_model("smollm2-135m", dtype="float32", device="cpu")
    lora = lora_on_every_unit(base)
    merged = after_module.merged_for_inference(copy.deepcopy(lora))
    _, _, held_out = load_split(DataConfig(max_length=96, eval_fraction=0.05))
    same = EvalSettings(generate_examples=8, max_new_tokens=24, batch_size=8)
    demo = make_config(EvalConfig, ROOT / "examples" / "demo.yaml").eval
    runs = {
        ("base", "before"): (before_module, base, same),
        ("base", "after"): (after_module, base, same),
        ("base", "demo"): (after_module, base, demo),
        ("lora", "before"): (before_module, lora, same),
        ("lora", "after"): (after_module, merged, same),
        ("lora", "demo"): (after_module, merged, demo),
    }
    times: dict[tuple[str, str], list[dict]] = {key: [] for key in runs}
    for round_ in range(args.rounds):
        keys = list(runs) if round_ % 2 == 0 else list(reversed(runs))
        for key in keys:
            module, model, settings = runs[key]
            times[key].append(timed_phases(module, model, tokenizer, held_out, settings))
            seconds = {k: round(v, 1) for k, v in times[key][-1].items() if "_s" in k}
            print(round_, key, seconds, flush=True)
    report(times, args, demo)


def report(times: dict, args: argparse.Namespace, demo: Any) -> None:
    """Medians per variant and phase, ratios to ``before``, and whether results agree."""
    med = {
        key: {
            phase: statistics.median(r[phase] for r in rows) for phase in ("loss_s", "generate_s")
        }
        for key, rows in times.items()
    }
    out: dict[str, Any] = {
        "before": args.before,
        "rounds": args.rounds,
        "threads": args.threads,
        "demo_eval_settings": {
            "max_examples": demo.max_examples,
            "generate_examples": demo.generate_examples,
            "max_new_tokens": demo.max_new_tokens,
        },
    }
    for variant in ("base", "lora"):
        before = med[(variant, "before")]
        for kind in ("after", "demo"):
            now = med[(variant, kind)]
            out[f"{variant} {kind}/before"] = {
                phase: round(now[phase] / before[phase], 3) for phase in now
            } | {"total": round(sum(now.values()) / sum(before.values()), 3)}
        first = times[(variant, "before")][0]
        last = times[(variant, "after")][0]
        out[f"{variant} loss before, after"] = [first["loss"], last["loss"]]
        out[f"{variant} same answers before, after"] = first["answers"] == last["answers"]
    out["median seconds"] = {f"{v} {k}": m for (v, k), m in med.items()}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    sys.exit(main())
