"""Draw a recorded ILA ranking as the unit heatmap of `ila report` (docs/img/ranking.png).

Reads one stage-2 record of ``benchmarks/bench_levers.py``
(``benchmarks/records/bench_levers/DATA/seedS/LEVER.json``: the gate names and the raw
scores s of one stage 2 on the embedded SmolLM2-135M), makes them layer scores
(importance = sigmoid(s), docs/method.md "Output") and draws them with
:func:`ila.reporting.plots.heatmap_figure`, the top ``--fraction`` outlined. Nothing is
rerun. Usage::

    python scripts/draw_ranking.py \\
        benchmarks/records/bench_levers/ila-instruct/seed0/default.json docs/img/ranking.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from ila.core.scores import LayerScores, UnitScore
from ila.reporting.figures import save_png
from ila.reporting.marks import top_marks
from ila.reporting.plots import heatmap_figure


def record_scores(record: dict[str, Any], origin: str) -> LayerScores:
    """The layer scores of a bench_levers record: one module unit per gate."""
    units, layout = [], []
    for name, raw in zip(record["gate_names"], record["raw_scores"], strict=True):
        parts = name.split(".", 2)
        if len(parts) != 3 or parts[0] != "layers" or not parts[1].isdigit():
            raise SystemExit(f"{origin}: gate {name!r} is not layers.BLOCK.MODULE")
        block = int(parts[1])
        units.append(UnitScore(name, block, parts[2], 1 / (1 + math.exp(-raw)), raw))
        layout.append({"name": name, "block": block})
    model = (
        f"smollm2-135m, {record['data']}, seed {record['seed']}, "
        f"stage 2 at T = {record['T']} ({record['lever']})"
    )
    num_blocks = max(u.block for u in units) + 1
    meta = {"model_type": "llama", "blocks_path": "model.layers", "num_blocks": num_blocks}
    return LayerScores("ila", model, "module", units, {**meta, "units": layout})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("record", type=Path, help="a benchmarks/records/bench_levers JSON file")
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("--fraction", type=float, default=0.25, help="top set to outline")
    args = parser.parse_args(argv)
    if not args.record.is_file():
        raise SystemExit(f"{args.record}: no such record")
    scores = record_scores(json.loads(args.record.read_text()), str(args.record))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_png(heatmap_figure(scores, top_marks(scores, args.fraction)), args.output)
    print(f"{args.output}: {len(scores.units)} units, top {100 * args.fraction:g}% outlined")
    return 0


if __name__ == "__main__":
    sys.exit(main())
