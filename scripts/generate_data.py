"""Regenerate the embedded default dataset ``src/ila/resources/ila_instruct.jsonl``.

Usage: ``python scripts/generate_data.py [--num-examples 1200] [--seed 0] [--output PATH]``.
The shipped file is this script's output with the defaults; a test checks that they match.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ila.instruct_data import generate_ila_instruct, write_jsonl

DEFAULT_OUTPUT = (
    Path(__file__).resolve().parents[1] / "src" / "ila" / "resources" / "ila_instruct.jsonl"
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-examples", type=int, default=1200, help="records to generate")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSONL file to write")
    args = parser.parse_args(argv)
    records = generate_ila_instruct(args.num_examples, args.seed)
    write_jsonl(records, args.output)
    print(f"wrote {len(records)} records to {args.output}")


if __name__ == "__main__":
    main()
