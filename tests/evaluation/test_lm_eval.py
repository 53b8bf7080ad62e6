"""lm-evaluation-harness requests on the in-memory model, with ila's progress lines.

Runs only where the optional ``lm-eval`` package is installed (it is not a dependency)."""

import logging

import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from ila.evaluation import lm_eval_tasks  # noqa: E402

WORDS = ["seven", "nine", "two", "four", "six", "three", "one"]


def _lines(caplog, kind):
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "ila.progress" and r.getMessage().startswith(f"lm-eval {kind}:")
    ]


def test_requests_in_chunks_give_the_harness_results_and_progress_lines(
    tiny_llama, tiny_tokenizer, caplog, monkeypatch
):
    caplog.set_level(logging.INFO, logger="ila.progress")
    monkeypatch.setenv("ILA_PROGRESS_INTERVAL", "0")
    monkeypatch.setattr(lm_eval_tasks, "CHUNK_REQUESTS", 3)
    scored = [
        Instance("loglikelihood", {}, (f"Say {w}: the word is", f" {w}"), i)
        for i, w in enumerate(WORDS)
    ]
    until = {"until": ["\n"], "max_gen_toks": 5, "do_sample": False}
    generated = [
        Instance("generate_until", {}, (f"Say {w}:", dict(until)), i) for i, w in enumerate(WORDS)
    ]
    ours = lm_eval_tasks.reporting_hflm(tiny_llama, tiny_tokenizer, batch_size=2)
    theirs = HFLM(pretrained=tiny_llama, tokenizer=tiny_tokenizer, batch_size=2)
    got = ours.loglikelihood(scored)
    expected = theirs.loglikelihood(scored, disable_tqdm=True)
    assert [g[1] for g in got] == [e[1] for e in expected]
    assert [g[0] for g in got] == pytest.approx([e[0] for e in expected], rel=1e-5)
    assert ours.generate_until(generated) == theirs.generate_until(generated, disable_tqdm=True)
    for kind in ("loglikelihood", "generate_until"):
        lines = _lines(caplog, kind)
        assert lines[0].startswith(f"lm-eval {kind}: 3 of 7 requests (43%), ")
        assert lines[1].startswith(f"lm-eval {kind}: 6 of 7 requests (86%), ")
        assert lines[2].startswith(f"lm-eval {kind}: 7 requests in ") and len(lines) == 3
