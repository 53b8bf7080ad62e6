"""ILA from Python: rank the units, tune the top 30%, and compare with the base model.

    python examples/python_api.py [OUTPUT_DIR] [--quick]

Runs on the embedded SmolLM2-135M and the embedded ila-instruct data (no network). The
settings are the keyword forms of the command-line flags (``stage1_max_steps=20`` is
``--stage1-max-steps 20``). ``--quick`` shrinks every step count to a smoke test (the
test suite runs it so); without it this takes about 10 minutes on a 2-core CPU.
"""

import argparse
from pathlib import Path

import ila


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", nargs="?", type=Path, default=Path("runs/python-api"))
    parser.add_argument("--quick", action="store_true", help="a few steps of everything")
    args = parser.parse_args()
    out = args.output_dir
    if args.quick:
        sizes = {"stage1_max_steps": 4, "stage1_min_steps": 0, "stage2_steps": 2}
        tune_steps, limit = 2, 60
    else:
        sizes, tune_steps, limit = {}, 100, None

    # Stages 1-2: which units matter for this data? (ILA, docs/method.md)
    scored = ila.score(
        "smollm2-135m", "ila-instruct", output_dir=out / "scores", limit=limit, overwrite=True,
        **sizes,
    )  # fmt: skip
    ranking = scored.scores.to_dataframe().sort_values("rank")
    print("top 10% of units:", ", ".join(scored.scores.top(0.1)))
    print(ranking.groupby("module_type")["importance"].mean().round(3).to_string())

    # Stage 3: LoRA on the top 30% only, starting from the stage-1 adapter.
    tuned = ila.finetune(
        "smollm2-135m", "ila-instruct", output_dir=out / "finetune", scores=out / "scores",
        tune_top_fraction=0.3, init_from_stage1=True, max_steps=tune_steps, limit=limit,
        overwrite=True,
    )  # fmt: skip
    print(f"tuned {tuned.summary.trainable_parameters:,} parameters")

    for name, adapter in (("base", None), ("top 30%", out / "finetune")):
        result = ila.evaluate(
            "smollm2-135m", "ila-instruct", output_dir=out / f"eval-{name.replace(' ', '')}",
            adapter=adapter, eval_generate_examples=0, limit=limit, overwrite=True,
        )  # fmt: skip
        print(f"{name}: held-out loss {result.result.metrics['loss']:.4f}")


if __name__ == "__main__":
    main()
