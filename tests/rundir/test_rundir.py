"""The run-directory contract: atomic files, refusal of occupied dirs, run state."""

import json

import pytest

from ila.errors import IlaError
from ila.files import atomic_directory, atomic_write_json
from ila.rundir import RunDir, prepare_output_dir, read_run_state, release_run_lock


def test_atomic_write_json_refuses_nan_and_leaves_nothing(tmp_path):
    target = tmp_path / "a.json"
    with pytest.raises(ValueError):
        atomic_write_json(target, {"x": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_appears_only_on_success(tmp_path):
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "adapter") as tmp:
        (tmp / "weights.bin").write_bytes(b"123")
        raise RuntimeError("crash mid-save")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(tmp_path / "adapter") as tmp:
        (tmp / "weights.bin").write_bytes(b"123")
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_prepare_refuses_an_occupied_dir_unless_overwrite(tmp_path):
    out = tmp_path / "run"
    prepare_output_dir(out, command="score")
    (out / "layer_scores.json").write_text("{}")
    with pytest.raises(IlaError, match="already holds files; pass overwrite"):
        prepare_output_dir(out, command="score")
    prepare_output_dir(out, command="score", overwrite=True)
    release_run_lock(out)  # prepare_output_dir locks the run for this process
    assert sorted(p.name for p in out.iterdir()) == ["run_state.json"]


def test_run_state_records_completed_stages(tmp_path):
    out = prepare_output_dir(tmp_path / "run", command="run")
    assert read_run_state(out)["completed_stages"] == []
    RunDir(out).mark("score")
    RunDir(out).mark("score")
    state = json.loads((out / "run_state.json").read_text())
    assert state["command"] == "run" and state["completed_stages"] == ["score"]


def test_output_dir_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(IlaError, match="is a file"):
        prepare_output_dir(path, command="score")


def test_resume_reads_a_setting_added_since_the_run_began_as_its_default(tmp_path):
    """A run's config.yaml from before a setting existed (run.within_module_type) resumes
    when the setting is at its default, and is refused when it is set away from it; a
    setting the run did record is compared as before."""
    import yaml

    from ila.errors import IlaError
    from ila.rundir import require_resumable

    run = tmp_path / "run"
    run.mkdir()
    (run / "run_state.json").write_text(json.dumps({"command": "run"}))
    (run / "config.yaml").write_text(yaml.safe_dump({"run": {"tune_top_fraction": 0.3}}))
    now = {"run": {"tune_top_fraction": 0.3, "within_module_type": False}}
    require_resumable(run, now, finished_stage=None)
    now["run"]["within_module_type"] = True
    with pytest.raises(IlaError, match="resume: within_module_type is True here but None in"):
        require_resumable(run, now, finished_stage=None)
    recorded = {"run": {"tune_top_fraction": 0.3, "within_module_type": True}}
    (run / "config.yaml").write_text(yaml.safe_dump(recorded))
    now["run"]["within_module_type"] = False
    with pytest.raises(IlaError, match="resume: within_module_type is False here but True in"):
        require_resumable(run, now, finished_stage=None)
