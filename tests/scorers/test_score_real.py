"""`ila score` on the real embedded SmolLM2-135M with a few steps per stage (slow)."""

import json

import pytest

from ila.cli import main
from ila.core.scores import LayerScores


@pytest.mark.slow
def test_score_embedded_model_few_steps(tmp_path, embedded_cache, monkeypatch):
    monkeypatch.setenv("ILA_CACHE_DIR", str(embedded_cache))
    out = tmp_path / "run"
    argv = [
        "score", "--output-dir", str(out), "--limit", "40", "--max-length", "96",
        "--stage1-max-steps", "3", "--stage1-min-steps", "0", "--stage2-steps", "3",
        "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    scores = LayerScores.load(out)
    assert len(scores.units) == 30 * 7 and scores.layout["num_blocks"] == 30
    assert scores.names[-1] == "layers.29.mlp.down_proj"
    assert scores.meta["T"] == 3 and scores.meta["stage1_stable"] is False
    data = json.loads((out / "data.json").read_text())
    assert data["num_train"] == 36 and data["num_dropped"] == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["stage1"] * 3 + ["stage2"] * 3
    assert (out / "report" / "heatmap.png").stat().st_size > 1000
