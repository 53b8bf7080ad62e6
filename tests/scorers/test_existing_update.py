"""ILA on an update that already exists (docs/method.md, "ILA on an update you already
have"): `ila score --from-adapter` and `--from-model`, their checks and refusals."""

import json
from pathlib import Path

import pytest
import torch

import ila
from ila.errors import IlaError

TINY = {"max_length": 64, "limit": 40, "batch_size": 4, "device": "cpu", "precision": "fp32"}
STAGE2 = {"stage2_steps": 6, "stage2_grad_accum": 1}


def _importances(run) -> dict[str, float]:
    return {u.name: u.importance for u in run.scores.units}


@pytest.fixture(scope="module")
def own_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("own") / "run"
    return ila.score(
        str(tiny_model_dir),
        output_dir=out,
        stage1_max_steps=6,
        stage1_min_steps=0,
        **TINY,
        **STAGE2,
    )


def test_ranking_an_ila_adapter_equals_that_runs_own_stage2(own_run, tiny_model_dir, tmp_path):
    adapter = own_run.output_dir / "stage1" / "adapter"
    again = ila.score(
        str(tiny_model_dir), output_dir=tmp_path / "a", from_adapter=str(adapter), **TINY, **STAGE2
    )
    ours, theirs = _importances(own_run), _importances(again)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert theirs[name] == pytest.approx(ours[name], abs=1e-5)
    assert again.scores.meta["source"]["kind"] == "adapter"
    assert again.scores.meta["T"] is None
    summary = json.loads((tmp_path / "a" / "stage1" / "summary.json").read_text())
    assert summary["source"] == "adapter" and summary["steps"] == 0
    assert (tmp_path / "a" / "report" / "ranking.md").is_file()
    page = ila.report(tmp_path / "a", output_dir=tmp_path / "page")
    text = page.read_text()
    assert "No stage-1 training" in text and "--from-adapter" in text
    assert not (tmp_path / "page" / "stage1_loss.png").exists()
    comparison = ila.compare([own_run.output_dir, tmp_path / "a"], output_dir=tmp_path / "cmp")
    assert comparison.pairs[0].spearman == pytest.approx(1.0)


def _plain_peft_adapter(model_dir: Path, out: Path, targets: list[str]) -> Path:
    """An adapter written by plain peft (not ila), B nonzero so it is an update."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    peft_model.save_pretrained(out)
    return out


def test_a_plain_peft_adapter_of_some_modules_ranks_only_those(tiny_model_dir, tmp_path):
    adapter = _plain_peft_adapter(tiny_model_dir, tmp_path / "peft", ["q_proj", "v_proj"])
    run = ila.score(
        str(tiny_model_dir), output_dir=tmp_path / "r", from_adapter=str(adapter), **TINY, **STAGE2
    )
    names = [u.name for u in run.scores.units]
    assert names and all(n.endswith(("q_proj", "v_proj")) for n in names)
    not_adapted = run.scores.meta["source"]["not_adapted"]
    assert any(n.endswith("mlp.up_proj") for n in not_adapted)
    assert not set(not_adapted) & set(names)
    assert run.scores.meta["source"]["rank"] == 4
    # The ranking is usable downstream: select and compare accept it.
    selection = ila.select(run.output_dir, tune_top_fraction=0.5)
    assert selection.selected and set(selection.selected) <= set(names)
    tuned = ila.finetune(
        str(tiny_model_dir),
        output_dir=tmp_path / "ft",
        scores=run.output_dir,
        tune_top_fraction=0.5,
        max_steps=2,
        **TINY,
    )
    assert tuned.output_dir.is_dir()


def _fine_tuned_copy(model_dir: Path, out: Path, changed: list[str]) -> Path:
    """A 'full fine-tune' of the tiny model: only the named units' weights changed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for name in changed:
            weight = model.get_submodule(f"model.{name}").weight
            weight.add_(torch.randn_like(weight) * 0.5)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def test_from_model_ranks_a_planted_change_first(tiny_model_dir, tmp_path):
    planted = ["layers.2.mlp.down_proj", "layers.1.mlp.up_proj"]
    aligned = _fine_tuned_copy(tiny_model_dir, tmp_path / "aligned", planted)
    run = ila.score(
        str(tiny_model_dir),
        output_dir=tmp_path / "r",
        from_model=str(aligned),
        stage2_steps=20,
        stage2_grad_accum=1,
        **TINY,
    )
    assert set(run.scores.ranking()[:2]) == set(planted)
    norms = run.scores.meta["stage1_update_norms"]
    names = [u.name for u in run.scores.units]
    unchanged = [norms[i] for i, n in enumerate(names) if n not in planted]
    assert max(unchanged) == 0.0
    assert run.scores.meta["source"]["kind"] == "model-pair"


def test_from_model_gates_the_same_deltas_as_a_full_stage1(tiny_model_dir, tmp_path):
    """A full stage 1 saves its deltas; the pair (base, base + deltas) ranks the same."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    full = ila.score(
        str(tiny_model_dir),
        output_dir=tmp_path / "full",
        stage1_method="full",
        stage1_max_steps=4,
        stage1_min_steps=0,
        **TINY,
        **STAGE2,
    )
    deltas = load_file(str(tmp_path / "full" / "stage1" / "deltas" / "deltas.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for name, delta in deltas.items():
            model.get_submodule(f"model.{name}").weight.add_(delta)
    model.save_pretrained(tmp_path / "aligned")
    pair = ila.score(
        str(tiny_model_dir),
        output_dir=tmp_path / "pair",
        from_model=str(tmp_path / "aligned"),
        **TINY,
        **STAGE2,
    )
    ours, theirs = _importances(full), _importances(pair)
    for name in ours:
        assert theirs[name] == pytest.approx(ours[name], abs=1e-4)


def _refused(tmp_path, words: tuple[str, ...], **kwargs) -> None:
    out = tmp_path / "refused"
    with pytest.raises(IlaError) as err:
        ila.score(output_dir=out, **TINY, **STAGE2, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    for word in words:  # Python errors name keywords where the CLI names flags
        assert (word[2:].replace("-", "_") if word.startswith("--") else word) in message
    assert not out.exists()


def test_adapter_refusals_are_one_line_and_write_nothing(own_run, tiny_model_dir, tmp_path):
    import shutil

    from peft import PromptTuningConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    model_dir = str(tiny_model_dir)
    _refused(tmp_path, ("--from-adapter", "does not exist"), model=model_dir, from_adapter="nope")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    prompt.save_pretrained(tmp_path / "prompt")
    _refused(
        tmp_path, ("PROMPT_TUNING", "LoRA"), model=model_dir, from_adapter=str(tmp_path / "prompt")
    )
    # Target modules the model does not have.
    adapter = _plain_peft_adapter(tiny_model_dir, tmp_path / "peft", ["q_proj"])
    missing = tmp_path / "missing"
    shutil.copytree(adapter, missing)
    config = json.loads((missing / "adapter_config.json").read_text())
    config["target_modules"] = ["no_such_proj"]
    (missing / "adapter_config.json").write_text(json.dumps(config))
    _refused(
        tmp_path, ("--from-adapter", "does not fit"), model=model_dir, from_adapter=str(missing)
    )
    # Weights whose shapes do not fit.
    shapes = tmp_path / "shapes"
    shutil.copytree(adapter, shapes)
    weights = load_file(str(shapes / "adapter_model.safetensors"))
    key = next(k for k in weights if "lora_A" in k)
    weights[key] = torch.zeros(weights[key].shape[0], weights[key].shape[1] + 3)
    save_file(weights, str(shapes / "adapter_model.safetensors"))
    _refused(
        tmp_path, ("--from-adapter", "does not fit"), model=model_dir, from_adapter=str(shapes)
    )
    # An ila adapter of another base model (its fingerprint beside it differs).
    other = _fine_tuned_copy(tiny_model_dir, tmp_path / "other", ["layers.0.mlp.up_proj"])
    own_adapter = str(own_run.output_dir / "stage1" / "adapter")
    _refused(tmp_path, ("--from-adapter",), model=str(other), from_adapter=own_adapter)


def test_model_pair_and_combination_refusals(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    model_dir = str(tiny_model_dir)
    aligned = _fine_tuned_copy(tiny_model_dir, tmp_path / "aligned", ["layers.0.mlp.up_proj"])
    both = {"from_adapter": str(aligned), "from_model": str(aligned)}
    _refused(tmp_path, ("--from-adapter", "--from-model"), model=model_dir, **both)
    _refused(tmp_path, ("--scorer",), model=model_dir, from_model=str(aligned), scorer="random")
    _refused(tmp_path, ("--seeds",), model=model_dir, from_model=str(aligned), seeds=2)
    _refused(tmp_path, ("--from-model", "does not exist"), model=model_dir, from_model="./nope")
    # Another architecture.
    config = json.loads((aligned / "config.json").read_text())
    (aligned / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    _refused(tmp_path, ("--from-model", "gpt2"), model=model_dir, from_model=str(aligned))
    (aligned / "config.json").write_text(json.dumps(config))
    # A unit matrix of another shape.
    weights = load_file(str(aligned / "model.safetensors"))
    key = "model.layers.1.self_attn.q_proj.weight"
    weights[key] = weights[key][:, :-2].contiguous()
    save_file(weights, str(aligned / "model.safetensors"), metadata={"format": "pt"})
    _refused(tmp_path, ("--from-model", "shape", key), model=model_dir, from_model=str(aligned))


def test_an_adapter_is_ranked_under_dpo_and_cli_refusals_name_flags(
    own_run, tiny_model_dir, tmp_path, capsys
):
    """--objective dpo applies to stage 2 on an adapter (its reference: the model with the
    adapter switched off); from the command line a refusal names the flag, exits 2 and
    writes nothing."""
    from tests.conftest import fails

    from ila.cli import main

    adapter = str(own_run.output_dir / "stage1" / "adapter")
    tiny = ["--max-length", "64", "--limit", "40", "--batch-size", "4", "--device", "cpu"]
    out = tmp_path / "dpo"
    argv = ["-q", "score", "--model", str(tiny_model_dir), "--from-adapter", adapter]
    argv += ["--data", "ila-preference", "--objective", "dpo", "--stage2-steps", "3"]
    assert main([*argv, "--output-dir", str(out), *tiny]) == 0
    scores = json.loads((out / "layer_scores.json").read_text())
    assert scores["meta"]["objective"] == "dpo" and scores["meta"]["source"]["kind"] == "adapter"
    refused = tmp_path / "refused"
    argv = ["score", "--model", str(tiny_model_dir), "--from-model", str(tmp_path / "nope")]
    fails([*argv, "--output-dir", str(refused), *tiny], capsys, "--from-model", "does not exist")
    assert not refused.exists()


def test_learn_stage2_is_the_runs_own_stage2(own_run, tiny_model_dir, tmp_path):
    """The library call the benchmarks use gives, on a run's stage-1 adapter with the run's
    settings and features, the gates that run's stage 2 learned."""
    from peft import PeftModel

    from ila.api import make_config
    from ila.config import ScoreConfig
    from ila.core.layers import find_layers
    from ila.data import load_split, tokenize_examples
    from ila.model.loading import load_model
    from ila.scorers.existing import learn_stage2

    config = make_config(ScoreConfig, own_run.output_dir / "config.yaml")
    model, tokenizer = load_model(str(tiny_model_dir), device="cpu")
    layer_map = find_layers(model)
    peft_model = PeftModel.from_pretrained(model, own_run.output_dir / "stage1" / "adapter")
    _, train, _ = load_split(config.data)
    features = tokenize_examples(train, tokenizer, max_length=64).features
    summary = learn_stage2(
        peft_model,
        tokenizer=tokenizer,
        layer_map=layer_map,
        train_features=features,
        config=config,
        output_dir=tmp_path / "s2",
        data_fingerprint="x",
        seed=config.train.seed,
    )
    recorded = json.loads((own_run.output_dir / "stage2" / "summary.json").read_text())
    assert summary["gate_names"] == recorded["gate_names"]
    assert summary["gates"] == pytest.approx(recorded["gates"], abs=1e-5)
    assert summary["raw_scores"] == pytest.approx(recorded["raw_scores"], abs=1e-5)
    assert (tmp_path / "s2" / "stage2" / "summary.json").is_file()
