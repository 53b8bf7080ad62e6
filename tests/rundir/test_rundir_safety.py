"""--overwrite deletes only ila's own files, and one job at a time writes a run directory.

What --overwrite may replace is decided before anything is loaded or deleted; what it
deletes is only the names ila writes (ila.rundir.RUN_ENTRIES). The run lock is an OS file
lock, so the races are tested with real processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import fails, tree
from ila.cli import main
from ila.errors import IlaError
from ila.rundir import LOCK_FILE, check_output_dir, prepare_output_dir, release_run_lock, run_lock

TINY_RUN = ["--limit", "24", "--max-length", "64", "--batch-size", "4", "--device", "cpu"]
SRC = Path(__file__).resolve().parents[2] / "src"


def a_run(path: Path, command: str = "score") -> Path:
    """A finished-looking run directory of ``command`` (no model needed)."""
    prepare_output_dir(path, command=command)
    release_run_lock(path)
    (path / "config.yaml").write_text("model: {}\n")
    (path / "stage1").mkdir()
    (path / "stage1" / "summary.json").write_text("{}")
    (path / "layer_scores.json").write_text("{}")
    return path


# -- what --overwrite refuses --------------------------------------------------------------


def test_overwrite_refuses_a_directory_without_run_state(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("years of work")
    before = tree(notes)
    with pytest.raises(IlaError, match=r"holds files but no run_state\.json, so it is not an ila"):
        prepare_output_dir(notes, command="score", overwrite=True)
    assert tree(notes) == before


def test_overwrite_refuses_a_run_with_files_ila_did_not_write(tmp_path):
    run = a_run(tmp_path / "run")
    (run / "my-notes.md").write_text("keep me")
    (run / "plots").mkdir()
    before = tree(run)
    with pytest.raises(IlaError, match=r"holds files ila did not write \(my-notes.md, plots/\)"):
        prepare_output_dir(run, command="score", overwrite=True)
    assert tree(run) == before


def test_overwrite_refuses_a_symlinked_output_dir(tmp_path):
    run = a_run(tmp_path / "run")
    link = tmp_path / "link"
    link.symlink_to(run, target_is_directory=True)
    before = tree(run)
    with pytest.raises(IlaError, match="is a symbolic link; pass the directory it points to"):
        prepare_output_dir(link, command="score", overwrite=True)
    assert tree(run) == before and link.is_symlink()


def test_overwrite_refuses_the_current_directory_and_its_parents(tmp_path, monkeypatch):
    run = a_run(tmp_path / "run")
    before = tree(run)
    monkeypatch.chdir(run)
    with pytest.raises(IlaError, match="is the current directory; ila never replaces it"):
        prepare_output_dir(Path("."), command="score", overwrite=True)
    monkeypatch.chdir(run / "stage1")
    with pytest.raises(IlaError, match="is a directory that contains the current directory"):
        prepare_output_dir(run, command="score", overwrite=True)
    assert tree(run) == before


def test_overwrite_refuses_home_and_root(tmp_path, monkeypatch):
    home = a_run(tmp_path / "home")
    monkeypatch.setenv("HOME", str(home))
    before = tree(home)
    with pytest.raises(IlaError, match="is your home directory; ila never replaces it"):
        prepare_output_dir(home, command="score", overwrite=True)
    assert tree(home) == before
    # Only the check: it must refuse before prepare_output_dir would delete anything.
    with pytest.raises(IlaError, match="is a filesystem root"):
        check_output_dir(Path("/"), overwrite=True)


def test_overwrite_refuses_a_directory_that_contains_an_input(tmp_path):
    run = a_run(tmp_path / "run")
    (run / "stage1" / "data.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    before = tree(run)
    with pytest.raises(IlaError, match=r"contains the input .*data.jsonl; replacing the run"):
        prepare_output_dir(
            run,
            command="score",
            overwrite=True,
            inputs=["smollm2-135m", run / "stage1" / "data.jsonl"],
        )
    assert tree(run) == before


def test_cli_overwrite_keeps_a_run_that_holds_the_data(tiny_model_dir, tmp_path, capsys):
    run = a_run(tmp_path / "run", command="finetune")
    data = run / "config.yaml"  # any file of the run, given as --data
    before = tree(run)
    argv = ["finetune", "--model", str(tiny_model_dir), "--all-units", "--data", str(data)]
    fails([*argv, "--output-dir", str(run), "--overwrite", *TINY_RUN], capsys, "contains the input")
    assert tree(run) == before


# -- what --overwrite deletes ---------------------------------------------------------------


def test_overwrite_deletes_only_what_ila_wrote(tmp_path):
    run = a_run(tmp_path / "run")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("x")
    (run / "report").symlink_to(outside, target_is_directory=True)  # a known name, a link
    (run / ".layer_scores.json.abc123.tmp").write_text("{")  # an interrupted atomic write
    # ila never writes a link: one at a known name is the user's, and is refused.
    with pytest.raises(IlaError, match=r"holds files ila did not write \(report\)"):
        prepare_output_dir(run, command="score", overwrite=True)
    (run / "report").unlink()
    prepare_output_dir(run, command="score", overwrite=True)
    try:
        assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE, "run_state.json"]
        assert (outside / "precious.txt").is_file()
        assert json.loads((run / "run_state.json").read_text())["completed_stages"] == []
    finally:
        release_run_lock(run)
    assert sorted(p.name for p in run.iterdir()) == ["run_state.json"]


@pytest.mark.parametrize(
    "planted",
    [
        "report/my_notes.md",
        "stage1/my_extra.txt",
        "stage2/trainer/notes/",
        "stage1/adapter/edited_by_hand.safetensors.bak",
        "seeds/seed-0/stage1/summary.json.orig",
    ],
)
def test_overwrite_refuses_user_files_at_any_depth(tmp_path, planted):
    """PA9: a name ila does not write inside ila's own folders is refused, not deleted."""
    run = a_run(tmp_path / "run")
    (run / "seeds" / "seed-0" / "stage1").mkdir(parents=True)
    (run / "stage1" / "adapter").mkdir()
    (run / "stage2" / "trainer" / "checkpoint-20").mkdir(parents=True)
    (run / "stage2" / "trainer" / "checkpoint-20" / "optimizer.pt").write_bytes(b"x")
    path = run / planted
    path.parent.mkdir(parents=True, exist_ok=True)
    if planted.endswith("/"):
        path.mkdir()
        (path / "a.txt").write_text("the user's")  # a folder of theirs is named as one
    else:
        path.write_text("the user's")
    before = tree(run)
    with pytest.raises(IlaError, match=f"holds files ila did not write \\({planted}\\)"):
        prepare_output_dir(run, command="score", overwrite=True)
    assert tree(run) == before


def test_compare_overwrite_replaces_only_report_files(tmp_path, capsys):
    from conftest import write_score_runs

    runs = write_score_runs(tmp_path, [range(8), range(8, 0, -1)])
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    argv = ["compare", *map(str, runs), "--output-dir", str(out), "--overwrite"]
    fails(argv, capsys, "holds files but no run_state.json")
    assert (out / "keep.txt").is_file()
    (out / "keep.txt").unlink()
    assert main(argv) == 0 and main(argv) == 0  # its own outputs are replaced
    assert (out / "comparison.json").is_file()


def test_compare_refuses_a_symlinked_output_dir(tmp_path, capsys):
    from conftest import write_score_runs

    runs = write_score_runs(tmp_path, [range(8), range(8, 0, -1)])
    target = tmp_path / "target"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    fails(["compare", *map(str, runs), "--output-dir", str(link)], capsys, "is a symbolic link")
    assert link.is_symlink() and list(target.iterdir()) == []


# -- a read-only place ----------------------------------------------------------------------


def test_read_only_parent_is_refused_before_the_model_is_loaded(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    parent = tmp_path / "read-only"
    parent.mkdir()
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if Path(path) == parent and mode & os.W_OK:
            return False  # as on a read-only mount (chmod does not stop root)
        return real_access(path, mode, *args, **kwargs)

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr("ila.model.loading.load_model", no_load)
    out = parent / "runs" / "one"
    argv = ["score", "--model", str(tiny_model_dir), "--output-dir", str(out), *TINY_RUN]
    fails(argv, capsys, f"cannot write in its parent {parent}", "choose a writable directory")
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_parent_for_real(tiny_model_dir, tmp_path, capsys):
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        out = parent / "out"
        argv = ["score", "--model", str(tiny_model_dir), "--output-dir", str(out), *TINY_RUN]
        fails(argv, capsys, "cannot write in its parent")
    finally:
        parent.chmod(0o755)


# -- the run lock ---------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ila.errors import IlaError
    from ila.rundir import prepare_output_dir

    out, start, seconds = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    sys.argv = ["ila", "score", "--output-dir", str(out)]
    while not start.exists():
        time.sleep(0.01)
    try:
        prepare_output_dir(out, command="score")
    except IlaError as exc:
        print("refused:", exc, flush=True)
        sys.exit(0)
    print("locked", flush=True)
    time.sleep(seconds)
    """
)


def _holder(out: Path, start: Path, seconds: float) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out), str(start), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_two_processes_racing_for_one_directory(tmp_path):
    out, start = tmp_path / "run", tmp_path / "start"
    racers = [_holder(out, start, 60) for _ in range(2)]
    try:
        time.sleep(0.5)
        start.touch()  # both race from here
        lines = [p.stdout.readline().strip() for p in racers]
        assert sorted(line.split()[0] for line in lines) == ["locked", "refused:"], lines
        winner = racers[lines.index("locked")]
        refusal = next(line for line in lines if line.startswith("refused:"))
        assert f"is in use by another ila job (pid {winner.pid}, ila score" in refusal
        # A third job, through the CLI, is refused before it loads anything.
        with pytest.raises(IlaError, match=f"pid {winner.pid}, ila score, started as 'ila score"):
            check_output_dir(out, overwrite=True)
        # A killed holder leaves its lock file behind, but the lock dies with the process.
        winner.send_signal(signal.SIGKILL)
        winner.wait(timeout=30)
        assert (out / LOCK_FILE).is_file()
        run_lock(out, "score")
        holder = json.loads((out / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["command"] == "score"
        release_run_lock(out)
        assert not (out / LOCK_FILE).exists()
    finally:
        for p in racers:
            p.kill()
            p.wait(timeout=30)
            p.stdout.close()


def test_cli_job_is_refused_while_another_holds_the_directory(tiny_model_dir, tmp_path, capsys):
    out, start = tmp_path / "run", tmp_path / "start"
    start.touch()
    holder = _holder(out, start, 60)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = tree(out)
        for extra in ([], ["--overwrite"], ["--resume"]):
            argv = ["score", "--model", str(tiny_model_dir), "--output-dir", str(out), *extra]
            fails([*argv, *TINY_RUN], capsys, f"is in use by another ila job (pid {holder.pid}")
        assert tree(out) == before
    finally:
        holder.kill()
        holder.wait(timeout=30)
        holder.stdout.close()


def test_cli_job_holds_the_lock_while_it_writes_and_releases_it(
    tiny_model_dir, tmp_path, monkeypatch
):
    from ila import rundir

    seen = []
    real = rundir.write_environment

    def spy(output_dir, *rest):
        seen.append(json.loads((Path(output_dir) / LOCK_FILE).read_text()))
        real(output_dir, *rest)

    monkeypatch.setattr(rundir, "write_environment", spy)
    out = tmp_path / "run"
    argv = ["-q", "score", "--scorer", "random", "--model", str(tiny_model_dir)]
    assert main([*argv, "--output-dir", str(out), *TINY_RUN]) == 0
    assert seen and seen[0]["pid"] == os.getpid() and seen[0]["command"] == "score"
    assert not (out / LOCK_FILE).exists()  # released (and removed) when the job ended
    # Released even when the job fails part way.
    monkeypatch.setattr(rundir, "write_environment", lambda *_: (_ for _ in ()).throw(OSError()))
    with pytest.raises(OSError):
        main([*argv, "--output-dir", str(out), "--overwrite", *TINY_RUN])
    assert not (out / LOCK_FILE).exists()


# -- Ctrl-C ---------------------------------------------------------------------------------


def test_interrupt_message_points_at_resume(tmp_path, capsys, monkeypatch):
    def interrupted(config, output_dir, **kwargs):
        prepare_output_dir(output_dir, command="score")
        release_run_lock(output_dir)
        raise KeyboardInterrupt

    monkeypatch.setattr("ila.jobs.score.score", interrupted)
    out = tmp_path / "run"
    assert main(["-q", "score", "--output-dir", str(out)]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("ila: interrupted; the run in")
    assert "run the same command with --resume" in err
    # Interrupted before the run started (no run_state.json), or by a command that cannot
    # resume: no hint.
    monkeypatch.setattr(
        "ila.jobs.score.score", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt)
    )
    assert main(["-q", "score", "--output-dir", str(tmp_path / "other")]) == 130
    assert capsys.readouterr().err.strip() == "ila: interrupted"
    monkeypatch.setattr(
        "ila.jobs.evaluate.evaluate", lambda *a, **k: interrupted(None, tmp_path / "e")
    )
    assert main(["-q", "eval", "--output-dir", str(tmp_path / "e")]) == 130
    assert capsys.readouterr().err.strip() == "ila: interrupted"


# -- a write that the file system refuses ------------------------------------------------------


def test_a_file_size_limit_hit_while_saving_is_one_error_line(tiny_model_dir, tmp_path):
    """The weights file passes the limit; safetensors reports it in its own exception."""
    import resource

    limit = (tiny_model_dir / "model.safetensors").stat().st_size // 2

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "ft"
    argv = [sys.executable, "-m", "ila", "-q", "finetune", "--model", str(tiny_model_dir)]
    argv += ["--output-dir", str(out), "--all-units", "--method", "full", "--max-steps", "1"]
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [*argv, *TINY_RUN], preexec_fn=limited, env=env, capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("ila: error:")]
    assert "File too large" in line and "file-size limit" in line and "--resume" in line
    assert not (out / "changed_weights").exists()  # nothing half-written


def test_python_jobs_release_the_lock_when_they_return(tiny_model_dir, tmp_path):
    """From Python the process goes on after a job: its lock must not outlive the call."""
    import ila

    tiny = {"max_length": 64, "limit": 40, "batch_size": 4, "device": "cpu"}
    scored = ila.score(str(tiny_model_dir), output_dir=tmp_path / "s", scorer="random", **tiny)
    tuned = ila.finetune(
        str(tiny_model_dir), output_dir=tmp_path / "f", all_units=True, max_steps=1, **tiny
    )
    for out in (scored.output_dir, tuned.output_dir):
        assert not (out / LOCK_FILE).exists()
        # Another process can take the directory's lock at once.
        probe = subprocess.run(
            [sys.executable, "-c", _TAKE_LOCK, str(out / LOCK_FILE)], capture_output=True, text=True
        )
        assert probe.returncode == 0, probe.stderr


_TAKE_LOCK = (
    "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
    "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)"
)
