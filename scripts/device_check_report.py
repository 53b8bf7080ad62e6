"""The figures of the prepared GPU check's summary, read from what its steps wrote.

The pytest counts come from pytest's JUnit XML; the step times from the runs' own
``metrics.jsonl`` (one row per optimizer step, with the seconds since the stage began) and
summaries; the peak memory from scripts/device_check_probe.py; the estimate from
``ila plan --json``. A figure whose file is missing or cut short (its step failed, was
killed or did not run) is None. docs/distributed.md, "The prepared GPU check", defines every key.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

PLAN_PARTS = ("peak_bytes", "weight_bytes", "gradient_bytes", "optimizer_bytes",
              "activation_bytes")  # fmt: skip


def _json(path: Path) -> Any:
    """The file's JSON; None when it is missing or cut short (its step was killed: the
    step's own status records that)."""
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def pytest_counts(junit: Path) -> dict[str, Any]:
    """Selected, passed, failed, errors and skipped tests, the skip reasons and the names
    of the tests that failed; every value None when there is no report."""
    keys = ("selected", "passed", "failed", "errors", "skipped", "skip_reasons", "failures")
    try:
        cases = list(ET.parse(junit).getroot().iter("testcase")) if junit.is_file() else None
    except ET.ParseError:  # cut short by the step's timeout, which its status records
        cases = None
    if cases is None:
        return dict.fromkeys(keys)
    failed = [c for c in cases if c.find("failure") is not None]
    errors = [c for c in cases if c.find("error") is not None]
    skipped = [c.find("skipped") for c in cases if c.find("skipped") is not None]
    reasons = Counter(s.get("message", "") for s in skipped if s is not None)
    return {
        "selected": len(cases),
        "passed": len(cases) - len(failed) - len(errors) - len(skipped),
        "failed": len(failed),
        "errors": len(errors),
        "skipped": len(skipped),
        "skip_reasons": dict(reasons),
        "failures": [f"{c.get('classname')}::{c.get('name')}" for c in failed + errors],
    }


def steady_seconds_per_step(rows: list[dict[str, Any]]) -> float | None:
    """Seconds per step after the first quarter of the steps (CUDA start-up, first kernel
    launches), from the rows' ``elapsed_s``; None with fewer than 3 rows."""
    rows = sorted(rows, key=lambda r: r["step"])
    if len(rows) < 3:
        return None
    first = rows[max(1, len(rows) // 4) - 1]
    return (rows[-1]["elapsed_s"] - first["elapsed_s"]) / (rows[-1]["step"] - first["step"])


def stage_timing(
    rows: list[dict[str, Any]], summary: dict[str, Any] | None, tokens: int
) -> dict[str, Any]:
    """One stage's steps, seconds per step (ila's, and steady), tokens per step and second."""
    steady = steady_seconds_per_step(rows)
    return {
        "steps": summary.get("steps") if summary else None,
        "seconds_per_step": summary.get("seconds_per_step") if summary else None,
        "steady_seconds_per_step": steady,
        "tokens_per_step": tokens,
        "tokens_per_second": tokens / steady if steady else None,
    }


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def timing(work: Path, micro_tokens: int, stage2_accum: int) -> dict[str, Any]:
    """Step times of stage 1, stage 2 and the fine-tune."""
    score, ft = work / "score", work / "finetune"
    rows = _rows(score / "metrics.jsonl")
    return {
        "stage1": stage_timing(
            [r for r in rows if r.get("stage") == "stage1"],
            _json(score / "stage1" / "summary.json"),
            micro_tokens,
        ),
        "stage2": stage_timing(
            [r for r in rows if r.get("stage") == "stage2"],
            _json(score / "stage2" / "summary.json"),
            micro_tokens * stage2_accum,
        ),
        "finetune": stage_timing(
            [r for r in _rows(ft / "metrics.jsonl") if r.get("stage") == "finetune"],
            _json(ft / "finetune_summary.json"),
            micro_tokens,
        ),
    }


def _compare(measured: dict[str, Any] | None, stages: list[dict[str, Any]]) -> dict[str, Any]:
    """A process's measured peak beside the largest plan peak of the stages it ran."""
    top = max(stages, key=lambda st: st["peak_bytes"]) if stages else None
    value = measured.get("peak_bytes") if measured else None
    return {
        "measured_bytes": value,
        "plan_bytes": top["peak_bytes"] if top else None,
        "plan_stage": top["name"] if top else None,
        "ratio": value / top["peak_bytes"] if value and top and top["peak_bytes"] else None,
    }


def memory(work: Path, plan: dict[str, Any] | None) -> dict[str, Any]:
    """Peak memory of the score and fine-tune processes against the plan's estimate."""
    stages = plan["stages"] if plan else []
    score, ft = _json(work / "score_peak.json"), _json(work / "finetune_peak.json")
    kind = next((p["memory_kind"] for p in (score, ft) if p), None)
    return {
        "kind": kind,
        "score": _compare(score, [st for st in stages if st["name"] in ("stage 1", "stage 2")]),
        "finetune": _compare(ft, [st for st in stages if st["name"] == "fine-tune"]),
    }


def data_cut(work: Path) -> dict[str, Any]:
    """Whether every training example filled --max-length (then tokens per step are exact)."""
    data = _json(work / "score" / "data.json")
    if data is None:
        return {"num_train_features": None, "num_truncated": None, "every_example_cut": None}
    return {
        "num_train_features": data["num_train_features"],
        "num_truncated": data["num_truncated"],
        "every_example_cut": data["num_truncated"] == data["num_train_features"],
    }


def _plan(path: Path) -> dict[str, Any] | None:
    """``ila plan --json``'s output; None when the plan step wrote none."""
    plan = _json(path)
    return plan if isinstance(plan, dict) and "stages" in plan else None


def measurements(work: Path, micro_tokens: int, stage2_accum: int) -> dict[str, Any]:
    """The summary's ``model``, ``data``, ``timing``, ``memory`` and ``plan`` sections."""
    plan = _plan(work / "plan.json")
    return {
        "model": _json(work / "model.json"),
        "data": data_cut(work),
        "timing": timing(work, micro_tokens, stage2_accum),
        "memory": memory(work, plan),
        "plan": {
            "tokens_per_step": plan["tokens_per_step"] if plan else None,
            "stages": [
                {"name": st["name"], "what": st["what"], **{k: st[k] for k in PLAN_PARTS}}
                for st in (plan["stages"] if plan else [])
            ],
        },
    }
