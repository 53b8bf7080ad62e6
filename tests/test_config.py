"""Settings: one field each, flags generated from them, YAML with precedence, validation."""

import pytest

from ila.cli import _settings, build_parser
from ila.config import (
    ScoreConfig,
    Stage1Config,
    config_from_dict,
    config_to_dict,
    flag_name,
    resolve,
)
from ila.errors import IlaError


def parse(*argv):
    return build_parser().parse_args(["score", "--output-dir", "out", *argv])


def _resolve_config(args):
    """``ila score``'s settings as the CLI hands them to the API, resolved as it does."""
    settings = _settings(args)
    return resolve(ScoreConfig, settings.pop("config"), settings)


def test_every_setting_has_a_flag_and_help():
    help_text = build_parser()._subparsers._group_actions[0].choices["score"].format_help()
    for section, settings in config_to_dict(ScoreConfig()).items():
        for name in settings:
            assert flag_name(section, name) in help_text


def test_defaults_round_trip_through_a_dict():
    config = ScoreConfig()
    assert config_from_dict(ScoreConfig, config_to_dict(config)) == config


def test_precedence_default_yaml_flag(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(
        "stage1:\n  max_steps: 7\n  min_steps: 5\n  epsilon: 0.1\nlora:\n  rank: 4\n"
    )
    config = _resolve_config(parse("--config", str(yaml_file), "--stage1-max-steps", "9"))
    assert config.stage1.max_steps == 9  # flag beats YAML
    assert config.stage1.epsilon == 0.1  # YAML beats default
    assert config.lora.rank == 4
    assert config.stage2.steps == ScoreConfig().stage2.steps  # default


def test_list_and_bool_flags():
    config = _resolve_config(parse("--lora-module-types", "q_proj", "v_proj", "--bf16"))
    assert config.lora.module_types == ["q_proj", "v_proj"] and config.train.bf16 is True


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epsilon": 0.0}, "--stage1-epsilon"),
        ({"max_steps": 0}, "--stage1-max-steps"),
        (
            {"max_steps": 10, "min_steps": 11},
            "--stage1-min-steps: 11 is above --stage1-max-steps 10",
        ),
        ({"window": 0}, "--stage1-window"),
    ],
)
def test_validation_names_the_flag(kwargs, message):
    with pytest.raises(IlaError) as caught:
        Stage1Config(**kwargs)
    assert message in caught.value.render("flag")
    assert message.replace("--", "").replace("-", "_") in str(caught.value)


def test_unknown_yaml_section_and_bad_yaml(tmp_path):
    with pytest.raises(IlaError, match="unknown section 'stage3'"):
        config_from_dict(ScoreConfig, {"stage3": {}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage1: [unclosed\n")
    with pytest.raises(IlaError, match=r"bad.yaml:\d+: not valid YAML"):
        _resolve_config(parse("--config", str(bad)))


def test_one_yaml_drives_every_command():
    from ila.config import EvalConfig, FinetuneConfig, RunConfig

    shared = {
        "data": {"max_length": 96},
        "stage1": {"max_steps": 30},
        "run": {"tune_top_fraction": 0.2},
        "finetune": {"max_steps": 7},
        "eval": {"generate_examples": 3},
    }
    assert config_from_dict(ScoreConfig, shared).stage1.max_steps == 30  # run/eval skipped
    assert config_from_dict(FinetuneConfig, shared).finetune.max_steps == 7
    assert config_from_dict(EvalConfig, shared).eval.generate_examples == 3
    assert config_from_dict(RunConfig, shared).run.tune_top_fraction == 0.2
    with pytest.raises(IlaError, match="unknown section 'evaluate'; did you mean eval"):
        config_from_dict(FinetuneConfig, {"evaluate": {}})


def test_yaml_value_of_the_wrong_type_is_an_error():
    with pytest.raises(IlaError, match=r"stage1\.max_steps"):
        config_from_dict(ScoreConfig, {"stage1": {"max_steps": "many"}})


def test_run_takes_the_finetune_settings_and_moves_the_old_spellings(caplog):
    from ila.config import RunConfig

    config = config_from_dict(RunConfig, {"finetune": {"method": "full", "warmup_steps": 2}})
    assert config.finetune.method == "full" and config.finetune.warmup_steps == 2
    assert config.run.finetune and not caplog.text
    old = {"run": {"finetune_method": "full", "finetune_steps": 7, "finetune_learning_rate": 1e-4}}
    config = config_from_dict(RunConfig, old)
    assert (config.finetune.method, config.finetune.max_steps) == ("full", 7)
    assert config.finetune.learning_rate == 1e-4 and config.run.finetune_method is None
    assert (
        "--finetune-method, --finetune-steps, --finetune-learning-rate: deprecated" in caplog.text
    )
    stopped = config_from_dict(RunConfig, {"run": {"finetune_steps": 0}})
    assert not stopped.run.finetune and stopped.finetune.max_steps == 100
    with pytest.raises(IlaError, match=r"^init_from_stage1: starts from a LoRA adapter"):
        config_from_dict(
            RunConfig, {"run": {"finetune_init_from_stage1": True}, "finetune": {"method": "full"}}
        )


def test_run_and_plan_spell_the_selection_like_select_and_finetune(caplog):
    from ila.config import PlanSettings, RunConfig, RunSettings

    assert RunSettings().selection_rule == {"tune_top_fraction": 0.3}
    assert RunSettings(freeze_bottom_fraction=0.25).selection_rule == {
        "freeze_bottom_fraction": 0.25
    }
    with pytest.raises(IlaError, match="two rules; give one of them"):
        RunSettings(tune_top_fraction=0.2, freeze_bottom_fraction=0.25)
    old = config_from_dict(
        RunConfig, {"run": {"select_rule": "freeze-bottom-fraction", "select_fraction": 0.2}}
    )
    assert old.run.selection_rule == {"freeze_bottom_fraction": 0.2}
    assert "--select-rule/--select-fraction: deprecated" in caplog.text
    assert PlanSettings(select_fraction=0.4).tune_top_fraction == 0.4


def test_run_selects_within_module_type_from_a_flag_or_its_yaml(tmp_path, capsys):
    from conftest import fails
    from ila.api import make_config
    from ila.config import RunConfig, RunSettings

    assert RunSettings(within_module_type=True).selection_rule == {
        "tune_top_fraction": 0.3,
        "within_module_type": True,
    }
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("run:\n  freeze_bottom_fraction: 0.25\n  within_module_type: true\n")
    assert make_config(RunConfig, yaml_file).run.selection_rule == {
        "freeze_bottom_fraction": 0.25,
        "within_module_type": True,
    }
    with pytest.raises(IlaError, match=r"^within_module_type: stage2_unit block ranks blocks"):
        make_config(RunConfig, yaml_file, stage2_unit="block")
    argv = ["run", "--within-module-type", "--stage2-unit", "block", "--output-dir"]
    fails([*argv, str(tmp_path / "o")], capsys, "--within-module-type: --stage2-unit block")
    assert not (tmp_path / "o").exists()


def test_the_demo_config_resolves_for_ila_run():
    """examples/demo.yaml (make demo) is a valid `ila run` config; its evaluation takes the
    first eval.max_examples held-out examples, which `ila run` prints."""
    from pathlib import Path

    from ila.api import make_config
    from ila.config import RunConfig

    config = make_config(RunConfig, Path(__file__).parents[1] / "examples" / "demo.yaml")
    assert config.eval.max_examples is not None
    assert config.eval.generate_examples <= config.eval.max_examples
    assert config.eval.measures_data("run")
