"""Errors name settings, not flags (issue 27, item 2): a message holds the settings it is
about as :class:`ila.errors.Setting` parts, which the command line writes as its flags and
the Python API as its keywords; a value read from a YAML file is named by its key. No
message outside the CLI writes a flag as text, so no translation layer is needed."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

import ila
from conftest import fails
from ila.api import make_config
from ila.config import EvalConfig, ScoreConfig, resolve, setting
from ila.errors import IlaError, argument
from ila.rundir import check_output_dir, require_resumable
from ila.scorers import get_scorer

SRC = Path(__file__).resolve().parents[1] / "src" / "ila"
FLAG = re.compile(r"(?<![\w-])--[a-z]")
_RAISERS = {"IlaError", "require"}


def _flag_texts(path: Path) -> list[str]:
    """Each string literal with a ``--flag`` inside an ``IlaError(...)`` or ``require(...)``
    call of ``path``, as ``path:line: text``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        name = getattr(node, "func", None)
        if not isinstance(node, ast.Call) or getattr(name, "id", None) not in _RAISERS:
            continue
        for sub in ast.walk(node):
            text = sub.value if isinstance(sub, ast.Constant) else None
            if isinstance(text, str) and FLAG.search(text):
                found.append(f"{path.relative_to(SRC)}:{sub.lineno}: {text!r}")
    return found


def test_no_message_outside_the_cli_writes_a_flag():
    found = [text for path in sorted(SRC.rglob("*.py")) if path.name != "cli.py"
             for text in _flag_texts(path)]  # fmt: skip
    assert not found, "name settings with ila.config.setting / ila.errors.argument:\n" + (
        "\n".join(found)
    )


def test_a_setting_is_its_flag_on_the_command_line_and_its_keyword_in_python():
    error = IlaError(setting("stage1", "max_steps"), " must be >= 1; or raise ",
                     setting("lora", "rank"), " or pass ", argument("output_dir"))  # fmt: skip
    assert str(error) == "stage1_max_steps must be >= 1; or raise lora_rank or pass output_dir"
    assert error.render("flag") == (
        "--stage1-max-steps must be >= 1; or raise --lora-rank or pass --output-dir"
    )
    assert error.settings[0] == setting("stage1", "max_steps")
    assert setting("train", "batch_size").named("flag") == "--batch-size"
    assert setting("eval", "batch_size").named("python") == "eval_batch_size"
    assert argument("output", flag="--output-dir").named("flag") == "--output-dir"


@pytest.mark.parametrize(
    ("config_cls", "command", "flags", "keywords", "flag_text", "keyword_text"),
    [
        (ScoreConfig, "score", ["--stage1-max-steps", "0"], {"stage1_max_steps": 0},
         "--stage1-max-steps: must be >= 1", "stage1_max_steps: must be >= 1"),
        (ScoreConfig, "score", ["--lora-rank", "0"], {"lora_rank": 0},
         "--lora-rank: must be >= 1", "lora_rank: must be >= 1"),
        (EvalConfig, "eval", ["--eval-batch-size", "0"], {"eval_batch_size": 0},
         "--eval-batch-size: must be >= 1", "eval_batch_size: must be >= 1"),
        (EvalConfig, "eval", ["--no-eval-on-data"], {"eval_on_data": False},
         "pass --eval-mc-data or --eval-lm-eval-tasks too, or leave --eval-on-data on",
         "pass eval_mc_data or eval_lm_eval_tasks too, or leave eval_on_data on"),
    ],
)  # fmt: skip
def test_a_bad_setting_names_the_flag_or_the_keyword(
    config_cls, command, flags, keywords, flag_text, keyword_text, tmp_path, capsys
):
    fails([command, *flags, "--output-dir", str(tmp_path / "o")], capsys, flag_text)
    with pytest.raises(IlaError) as caught:
        make_config(config_cls, **keywords)
    assert keyword_text in str(caught.value) and "--" not in str(caught.value)


def test_an_unknown_scorer_names_the_scorer_setting(tmp_path, capsys):
    with pytest.raises(IlaError, match=r"^scorer: unknown scorer 'foo'"):
        get_scorer("foo")
    fails(["score", "--scorer", "foo", "--output-dir", str(tmp_path / "o")], capsys,
          "--scorer: unknown scorer 'foo'")  # fmt: skip


def test_an_output_dir_that_is_a_file_names_output_dir(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(IlaError) as caught:
        check_output_dir(file)
    assert str(caught.value).startswith(f"output_dir {file} is a file")
    fails(["score", "--output-dir", str(file)], capsys, f"--output-dir {file} is a file")


def test_a_resume_with_other_settings_names_the_setting_that_differs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_state.json").write_text(json.dumps({"command": "score"}))
    (run / "config.yaml").write_text(yaml.safe_dump({"stage1": {"max_steps": 5}}))
    with pytest.raises(IlaError) as caught:
        require_resumable(run, {"stage1": {"max_steps": 6}}, finished_stage=None)
    assert str(caught.value).startswith("resume: stage1_max_steps is 6 here but 5 in ")
    assert caught.value.render("flag").startswith("--resume: --stage1-max-steps is 6 here")
    (run / "config.yaml").write_text(yaml.safe_dump({"method": "ila"}))
    with pytest.raises(IlaError) as caught:
        require_resumable(run, {"method": "snr"}, finished_stage=None)
    assert caught.value.render("flag").startswith("--resume: --scorer is 'snr' here")


def test_a_wrong_value_in_a_file_names_its_key_on_both_surfaces(tmp_path, capsys):
    config = tmp_path / "wrong.yaml"
    config.write_text("stage1:\n  max_steps: six\n")
    fails(["score", "--config", str(config), "--output-dir", str(tmp_path / "o")], capsys,
          f"{config}: stage1.max_steps must be int, got 'six'")  # fmt: skip
    with pytest.raises(IlaError, match=r": stage1\.max_steps must be int, got 'six'"):
        make_config(ScoreConfig, config)
    with pytest.raises(IlaError, match=r"^stage1_max_steps must be int, got 'six'"):
        make_config(ScoreConfig, stage1_max_steps="six")  # a keyword: named as one


def test_a_recorded_scorer_must_be_the_commands_on_both_surfaces(tmp_path, capsys):
    """A run's config.yaml records its scorer ('method'); the CLI and the API resolve it in
    one place (ila.config.resolve) and both refuse another scorer."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"method": "ila", "stage1": {"max_steps": 50}}))
    words = "records method 'ila' but this command scores with 'snr'"
    fails(["score", "--config", str(config), "--scorer", "snr",
           "--output-dir", str(tmp_path / "c")], capsys, words, "(--scorer ila)")  # fmt: skip
    with pytest.raises(IlaError, match=re.escape(words) + r".*\(scorer ila\)"):
        ila.score(config=config, scorer="snr", output_dir=tmp_path / "p")
    with pytest.raises(IlaError, match=re.escape(words)):
        ila.score(config=yaml.safe_load(config.read_text()), scorer="snr", output_dir=tmp_path)
    assert not (tmp_path / "c").exists() and not (tmp_path / "p").exists()
    assert resolve(ScoreConfig, config).stage1.max_steps == 50  # the recorded scorer, ila
