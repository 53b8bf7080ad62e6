"""Regenerate the embedded datasets in ``src/ila/resources/``.

Usage: ``python scripts/generate_data.py [--dataset instruct|reasoning|preference|all]
[--num-examples N] [--seed S] [--output PATH]``. With no arguments the three shipped files
are rewritten: ``ila_instruct.jsonl`` (1,200 records, seed 0), ``ila_reasoning.jsonl``
(1,000 records, seed 0) and ``ila_preference.jsonl`` (1,200 pairs, seed 0); tests check
that the shipped files equal these outputs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ila_data.instruct import generate_ila_instruct, write_jsonl
from ila_data.preference import generate_ila_preference
from ila_data.reasoning import generate_ila_reasoning

RESOURCES = Path(__file__).resolve().parents[1] / "src" / "ila" / "resources"
Generator = Callable[[int, int], list[dict[str, Any]]]
# name -> (generator, default number of records, shipped file)
DATASETS: dict[str, tuple[Generator, int, Path]] = {
    "instruct": (generate_ila_instruct, 1200, RESOURCES / "ila_instruct.jsonl"),
    "reasoning": (generate_ila_reasoning, 1000, RESOURCES / "ila_reasoning.jsonl"),
    "preference": (generate_ila_preference, 1200, RESOURCES / "ila_preference.jsonl"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", choices=[*DATASETS, "all"], default="all", help="which dataset to write"
    )
    parser.add_argument(
        "--num-examples", type=int, default=None, help="records to generate (default: shipped)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--output", type=Path, default=None, help="JSONL file to write (one dataset only)"
    )
    args = parser.parse_args(argv)
    names = list(DATASETS) if args.dataset == "all" else [args.dataset]
    if len(names) > 1 and (args.output is not None or args.num_examples is not None):
        parser.error("--output and --num-examples need one --dataset")
    for name in names:
        generate, default_count, shipped = DATASETS[name]
        count = default_count if args.num_examples is None else args.num_examples
        records = generate(count, args.seed)
        output = args.output or shipped
        write_jsonl(records, output)
        print(f"wrote {len(records)} {name} records to {output}")


if __name__ == "__main__":
    main()
