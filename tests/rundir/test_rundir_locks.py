"""Every writer of a folder holds its lock while it writes and lets it go when it ends.

The jobs (score, finetune, eval, run) from the CLI and from Python; the writers of single
files and report folders (select, compare, report) take the same lock and check the folder
again under it. Locks are OS file locks, so "another process can use the folder" is
checked with a real second process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tree
from ila.cli import main
from ila.errors import IlaError
from ila.rundir import LOCK_FILE, RUN_LAYOUT, foreign_entries, read_run_state

SRC = Path(__file__).resolve().parents[2] / "src"
TINY = {"max_length": 64, "limit": 24, "batch_size": 4, "device": "cpu"}
TINY_ARGV = ["--max-length", "64", "--limit", "24", "--batch-size", "4", "--device", "cpu"]
EVAL_SMALL = {"eval_max_examples": 4, "eval_generate_examples": 2, "eval_max_new_tokens": 4}
SHORT_STAGES = {"stage1_max_steps": 3, "stage1_min_steps": 2, "stage2_steps": 2}
JOBS = {
    "score": ({**SHORT_STAGES, "save_steps": 1}, []),
    "finetune": ({"blocks": [1], "method": "full", "max_steps": 2, "save_steps": 1}, []),
    "eval": (EVAL_SMALL, []),
    "run": ({**SHORT_STAGES, "max_steps": 2, "save_steps": 1, **EVAL_SMALL}, []),
}


def _argv(command: str, model: Path, out: Path) -> list[str]:
    settings, _ = JOBS[command]
    argv = ["-q", command, "--model", str(model), "--output-dir", str(out), *TINY_ARGV]
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return argv


def _api(command: str, model: Path, out: Path) -> Path:
    import ila

    settings, _ = JOBS[command]
    job = getattr(ila, "evaluate" if command == "eval" else command)
    result = job(str(model), output_dir=out, **TINY, **settings)
    return result.score.output_dir if command == "run" else result.output_dir


def other_process_takes(folder: Path) -> bool:
    """Whether a second process can take ``folder``'s lock now (and let it go)."""
    code = (
        "import sys; from pathlib import Path; from ila.rundir import run_lock, release_run_lock;"
        "from ila.errors import IlaError\n"
        "try:\n run_lock(Path(sys.argv[1]), 'probe')\nexcept IlaError:\n sys.exit(3)\n"
        "release_run_lock(Path(sys.argv[1]))"
    )
    probe = subprocess.run(
        [sys.executable, "-c", code, str(folder)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
    )
    assert probe.returncode in (0, 3), probe.stderr
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("surface", ["cli", "api"])
@pytest.mark.parametrize("command", list(JOBS))
def test_every_job_releases_its_lock_and_writes_only_its_layout(
    command, surface, tiny_model_dir, tmp_path
):
    out = tmp_path / "out"
    if surface == "cli":
        assert main(_argv(command, tiny_model_dir, out)) == 0
    else:
        assert _api(command, tiny_model_dir, out) == out
    folders = [out] + [p.parent for p in out.rglob("run_state.json")]
    for folder in folders:
        assert not (folder / LOCK_FILE).exists(), folder
        assert other_process_takes(folder), folder
    # Everything the job wrote is in the layout --overwrite may delete (and nothing else is).
    assert foreign_entries(out, RUN_LAYOUT[read_run_state(out)["command"]]) == []


def _hold(folder: Path, seconds: float = 30.0) -> subprocess.Popen[str]:
    """A second process that holds ``folder``'s lock until it is killed."""
    code = (
        "import sys, time; from pathlib import Path; from ila.rundir import run_lock\n"
        "run_lock(Path(sys.argv[1]), 'score'); print('locked', flush=True); "
        "time.sleep(float(sys.argv[2]))"
    )
    folder.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(folder), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


@pytest.fixture()
def scored_runs(tmp_path) -> list[Path]:
    from conftest import write_score_runs

    return write_score_runs(tmp_path / "runs", [range(8), range(8, 0, -1)])


@pytest.fixture(scope="module")
def score_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A finished tiny score run (random scorer: a run record without training)."""
    out = tmp_path_factory.mktemp("score") / "run"
    argv = ["-q", "score", "--model", str(tiny_model_dir), "--scorer", "random", *TINY_ARGV]
    assert main([*argv, "--output-dir", str(out)]) == 0
    return out


@pytest.mark.parametrize("writer", ["compare", "select", "report"])
def test_writers_of_one_folder_are_refused_while_a_job_holds_it(
    writer, scored_runs, score_run, tmp_path, capsys
):
    """C1-C4: a folder a job is writing is not replaced (nor written into) by select,
    compare or report; each says who holds it and exits 2."""
    out = tmp_path / "busy"
    holder = _hold(out)
    try:
        (out / "config.yaml").write_text("the job's\n")
        before = tree(out)
        argv = {
            "compare": ["compare", *map(str, scored_runs), "--output-dir", str(out)],
            "select": ["select", str(score_run), "--tune-top-fraction", "0.25"],
            "report": ["report", str(score_run), "--output-dir", str(out)],
        }[writer]
        if writer == "select":
            argv += ["--output-dir", str(out)]
        assert main([*argv, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert "is in use by another ila job" in err and "ila score" in err
        assert tree(out) == before
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("writer", ["compare", "report"])
def test_report_writers_hold_the_folder_while_they_write(
    writer, scored_runs, score_run, tmp_path, monkeypatch
):
    """The reverse of C4: while compare/report fill their folder, a job is refused there."""
    import ila.reporting.comparison as comparison
    import ila.reporting.run_report as run_report

    seen = []
    module, name = (
        (comparison, "write_comparison_report")
        if writer == "compare"
        else (run_report, "write_run_report")
    )
    original = getattr(module, name)

    def probing(*args, **kwargs):
        seen.append(other_process_takes(tmp_path / "out"))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, probing)
    import ila.api  # the API imports the writers at call time, from their modules

    out = tmp_path / "out"
    if writer == "compare":
        ila.api.compare(scored_runs, output_dir=out)
    else:
        ila.api.report(score_run, output_dir=out)
    assert seen == [False]  # held while writing
    assert other_process_takes(out)  # released after
    assert not (out / LOCK_FILE).exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_failed_report_leaves_no_folder(scored_runs, tmp_path, monkeypatch):
    import ila.api
    import ila.reporting.comparison as comparison

    def broken(*args, **kwargs):
        raise OSError("disk went away")

    monkeypatch.setattr(comparison, "write_comparison_report", broken)
    with pytest.raises(OSError):
        ila.api.compare(scored_runs, output_dir=tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_select_rechecks_under_the_lock_and_refuses_bad_targets(score_run, tmp_path, capsys):
    """A second select into one folder is refused (no silent last-writer-wins); a file
    given as --output-dir and an unwritable folder are one-line errors."""
    out = tmp_path / "sel"
    argv = ["select", str(score_run), "--tune-top-fraction", "0.25", "--output-dir"]
    assert main([*argv, str(out)]) == 0
    first = (out / "selection.json").read_text()
    assert main([*argv, str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "selection.json").read_text() == first
    assert not (out / LOCK_FILE).exists()
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert main([*argv, str(a_file)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "is a file, not a directory" in err
    assert a_file.read_text() == "x"


def test_select_into_an_unwritable_folder_is_one_line(score_run, tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        argv = ["select", str(score_run), "--tune-top-fraction", "0.25"]
        assert main([*argv, "--output-dir", str(out)]) == 2
        assert "cannot write" in capsys.readouterr().err
    finally:
        out.chmod(0o755)


@pytest.mark.slow
def test_resumed_run_past_scoring_holds_its_folder(tiny_model_dir, tmp_path, monkeypatch):
    """L8: `ila run --resume` of a run whose scoring finished keeps the folder locked
    through selection and fine-tuning: a concurrent --overwrite is refused."""
    import ila.core.selection as selection

    out = tmp_path / "run"
    argv = [*_argv("run", tiny_model_dir, out), "--no-evaluate"]
    assert main(argv) == 0
    state = json.loads((out / "run_state.json").read_text())
    state["completed_stages"] = [
        s for s in state["completed_stages"] if s in ("stage1", "stage2", "score")
    ]
    (out / "run_state.json").write_text(json.dumps(state))
    seen = []
    original = selection.select_units

    def probing(*args, **kwargs):
        seen.append(other_process_takes(out))
        return original(*args, **kwargs)

    monkeypatch.setattr(selection, "select_units", probing)
    started = time.perf_counter()
    assert main([*argv, "--resume"]) == 0
    assert seen == [False], (
        f"the folder was free during selection ({time.perf_counter() - started:.0f}s)"
    )
    assert other_process_takes(out)
    assert "finetune" in read_run_state(out)["completed_stages"]


def test_lock_scopes_nest_and_release_once(tmp_path):
    from ila.rundir import RunDir

    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    with run.lock_scope():
        with run.locked("select"):
            pass
        assert not other_process_takes(run.path)  # the outer scope still holds it
    assert other_process_takes(run.path)
    with pytest.raises(IlaError, match="in use by another ila job"):
        holder = _hold(run.path)
        try:
            with run.locked("select"):
                pass
        finally:
            holder.kill()
            holder.wait()
