"""`ila run` loads its inputs once (ila.jobs.inputs): the base weights read from disk once,
each split tokenized once, and the same results as the jobs run one by one."""

import json

import pytest
import torch
from safetensors.torch import load_file

import ila
import ila.data
import ila.model.loading

TINY = {"max_length": 64, "limit": 40, "batch_size": 4, "device": "cpu"}
QUICK = {"stage1_max_steps": 4, "stage1_min_steps": 0, "stage2_steps": 2, "max_steps": 2}
EVAL = {"eval_generate_examples": 2, "eval_max_new_tokens": 3}


class _Counted:
    """The real function, with a count of its calls."""

    def __init__(self, function):
        self.function, self.calls = function, []

    def __call__(self, *args, **kwargs):
        self.calls.append(args[0] if args else None)
        return self.function(*args, **kwargs)


@pytest.fixture(scope="module")
def counted_run(tiny_model_dir, tmp_path_factory):
    """One `ila run` (score, select, both fine-tunes, evaluation of three variants), with
    the model loads and the tokenizations counted."""
    loads = _Counted(ila.model.loading.load_model)
    tokenizations = _Counted(ila.data.tokenize_examples)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ila.model.loading, "load_model", loads)
        patch.setattr(ila.data, "tokenize_examples", tokenizations)
        out = tmp_path_factory.mktemp("run") / "run"
        result = ila.run(str(tiny_model_dir), output_dir=out, **TINY, **QUICK, **EVAL)
    return out, result, loads, tokenizations


def test_run_reads_the_base_once_and_tokenizes_each_split_once(counted_run):
    _, result, loads, tokenizations = counted_run
    assert len(loads.calls) == 1 and result.model_loads == 1
    assert len(tokenizations.calls) == 2  # the training split and the held-out split
    assert result.finetune is not None and result.all_units is not None
    assert list(result.evaluation) == ["base", "all-units", "selected"]
    assert len({round(v["loss"], 6) for v in result.evaluation.values()}) == 3


def test_run_trains_and_measures_what_the_jobs_one_by_one_do(counted_run, tiny_model_dir, tmp_path):
    """The shared base is given back untouched after every step: a fine-tune of the run's
    selection from a fresh load trains the same adapter, and `ila eval` of each adapter
    from a fresh load measures the run's losses."""
    out, result, _, _ = counted_run
    alone = ila.finetune(
        str(tiny_model_dir),
        output_dir=tmp_path / "ft",
        selection=out / "selection.json",
        init_from_stage1=True,
        **TINY,
        max_steps=QUICK["max_steps"],
    )
    assert alone.summary.num_selected == result.finetune.summary.num_selected
    ours = load_file(str(out / "finetune" / "adapter" / "adapter_model.safetensors"))
    theirs = load_file(str(tmp_path / "ft" / "adapter" / "adapter_model.safetensors"))
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-6)
    variants = {"base": None, "all-units": out / "finetune-all-units", "selected": out / "finetune"}
    for name, adapter in variants.items():
        evaluated = ila.evaluate(
            str(tiny_model_dir), output_dir=tmp_path / f"ev-{name}", adapter=adapter, **TINY, **EVAL
        )
        measured = evaluated.result.metrics
        assert measured["loss"] == pytest.approx(result.evaluation[name]["loss"], abs=1e-5)
        assert measured["num_examples"] == result.evaluation[name]["num_examples"]
    recorded = json.loads((out / "eval" / "variants.json").read_text())["variants"]
    assert recorded == result.evaluation


def test_a_full_fine_tune_makes_the_next_step_read_the_base_again(tiny_model_dir, tmp_path):
    """A full fine-tune trains the base weights themselves, so the step after it reads them
    from disk again: score and the selective fine-tune share the first load, the all-units
    fine-tune and the evaluation each read their own. The base model's loss in the run is
    the untouched base's, as `ila eval` measures it from a fresh load."""
    out = tmp_path / "run"
    loads = _Counted(ila.model.loading.load_model)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ila.model.loading, "load_model", loads)
        result = ila.run(
            str(tiny_model_dir), output_dir=out, method="full", **TINY, **QUICK, **EVAL
        )
    assert result.model_loads == len(loads.calls) == 3
    base = ila.evaluate(str(tiny_model_dir), output_dir=tmp_path / "ev", **TINY, **EVAL)
    assert base.result.metrics["loss"] == pytest.approx(result.evaluation["base"]["loss"], abs=1e-6)
    tuned = ila.evaluate(
        str(tiny_model_dir),
        output_dir=tmp_path / "ev-sel",
        adapter=out / "finetune",
        **TINY,
        **EVAL,
    )
    assert tuned.result.metrics["loss"] == pytest.approx(
        result.evaluation["selected"]["loss"], abs=1e-5
    )
