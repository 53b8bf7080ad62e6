"""Progress: bars for a person at a terminal, periodic log lines in pipes and files
(ila.progress); --report-to checked early."""

import fcntl
import importlib.util
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

from ila.cli import main
from ila.config import TrainConfig
from ila.errors import IlaError
from ila.progress import Progress, format_duration, progress_interval, track
from ila.train.trainer import progress_bars_enabled

TINY = [
    "--max-length", "64",
    "--limit", "24",
    "--stage1-max-steps", "3",
    "--stage1-min-steps", "2",
    "--stage2-steps", "3",
]  # fmt: skip


BAR_END = re.compile(r"(?<!\d)3/3 \[")


class _Terminal:
    def isatty(self):
        return True

    def write(self, text):
        return len(text)

    def flush(self):
        pass


def _at_terminal(monkeypatch):
    # In the test body: pytest's output capture re-installs sys.stderr between phases.
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setattr(sys, "stderr", _Terminal())


def test_bars_only_at_a_terminal_outside_ci(monkeypatch):
    _at_terminal(monkeypatch)
    assert progress_bars_enabled()
    monkeypatch.setenv("CI", "true")
    assert not progress_bars_enabled()
    monkeypatch.delenv("CI")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    assert not progress_bars_enabled()
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS")
    monkeypatch.setattr(sys, "stderr", open(os.devnull, "w"))  # noqa: SIM115
    assert not progress_bars_enabled()


def test_quiet_flag_turns_bars_off(monkeypatch):
    _at_terminal(monkeypatch)
    assert progress_bars_enabled()
    try:
        assert main(["-q", "ls", "presets"]) == 0
        assert not progress_bars_enabled()
    finally:
        os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)


def _run_in_terminal(argv, tmp_path):
    """Run the CLI with stdout/stderr on a pseudo-terminal; returns everything it wrote."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "HF_HUB_DISABLE_PROGRESS_BARS")}
    leader, follower = pty.openpty()
    # A terminal of 40 rows x 120 columns (a fresh pseudo-terminal has size 0 x 0).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "ila", *argv],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env=env,
        cwd=tmp_path,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the terminal closes when the process exits
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert process.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


def test_trainer_bars_in_a_terminal(tiny_model_dir, tmp_path):
    argv = ["score", "--model", str(tiny_model_dir), *TINY, "--output-dir", str(tmp_path / "o")]
    shown = _run_in_terminal(argv, tmp_path)
    assert len(BAR_END.findall(shown)) >= 2  # both stage bars reach their last step
    assert "{'loss'" not in shown  # no printed dict per logged step


def test_evaluation_bars_in_a_terminal(tiny_model_dir, tmp_path):
    argv = ["eval", "--model", str(tiny_model_dir), "--max-length", "96", "--limit", "60"]
    argv += ["--eval-generate-examples", "2", "--eval-max-new-tokens", "4"]
    shown = _run_in_terminal([*argv, "--output-dir", str(tmp_path / "ev")], tmp_path)
    assert re.search(r"held-out loss: +100%\|.*\| 6/6 \[", shown), shown[-2000:]
    assert re.search(r"greedy answers: +100%\|.*\| 2/2 \[", shown), shown[-2000:]
    # The end line of each phase is logged at a terminal too.
    assert re.search(r"ila.progress: held-out loss: 6 examples in ", shown)


def test_no_bars_and_no_step_lines_when_not_a_terminal(tiny_model_dir, tmp_path, capfd):
    argv = ["score", "--model", str(tiny_model_dir), *TINY, "--output-dir", str(tmp_path / "o")]
    assert main(argv) == 0  # under pytest, stderr is a pipe
    out, err = capfd.readouterr()
    assert "ila score: ila on" in out
    assert not BAR_END.search(err) and "{'loss'" not in out + err


def test_unknown_or_missing_reporter_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["score", "--output-dir", str(out), "--report-to", "tensorbord"]) == 2
    assert "--report-to: unknown integration 'tensorbord'" in capsys.readouterr().err
    if importlib.util.find_spec("wandb") is None:
        assert main(["score", "--output-dir", str(out), "--report-to", "wandb"]) == 2
        err = capsys.readouterr().err
        assert "--report-to: wandb needs the 'wandb' package, which is not installed" in err
    assert not out.exists()
    assert TrainConfig(report_to="tensorboard").report_to == "tensorboard"


# --- progress lines where stderr is not a terminal --------------------------------------


def _progress_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "ila.progress"]


def test_lines_say_done_total_rate_and_time_left(caplog):
    caplog.set_level(logging.INFO, logger="ila.progress")
    with Progress("held-out loss", 12, unit="example", bar=False, interval=0) as progress:
        for _ in range(3):
            progress.advance(4)
    lines = _progress_lines(caplog)
    # A line per update while work is left (interval 0), then one end line, not a
    # "12 of 12" line before it.
    assert len(lines) == 3, lines
    assert re.fullmatch(
        r"held-out loss: 4 of 12 examples \(33%\), [\d.]+ (examples/s|s/example), "
        r"[\d.]+ s left",
        lines[0],
    ), lines[0]
    assert lines[1].startswith("held-out loss: 8 of 12 examples (67%)")
    assert re.fullmatch(
        r"held-out loss: 12 examples in [\d.]+ s \([\d.]+ (examples/s|s/example)\)", lines[2]
    )


def test_lines_are_throttled_by_the_interval(caplog):
    caplog.set_level(logging.INFO, logger="ila.progress")
    with Progress("phase", 1000, bar=False, interval=3600) as progress:
        for _ in range(999):
            progress.advance()
    assert _progress_lines(caplog) == [_progress_lines(caplog)[-1]]  # the end line only
    assert _progress_lines(caplog)[0].startswith("phase: 999 steps in ")


def test_a_cap_is_said_to_be_one_and_a_note_follows(caplog):
    caplog.set_level(logging.INFO, logger="ila.progress")
    progress = Progress("stage 1", 300, bar=False, interval=0)
    progress.update(40, total=330, at_most=True, note="check at step 40: drop 0.4")
    line = _progress_lines(caplog)[-1]
    assert line.startswith("stage 1: 40 of at most 330 steps (12%), ")
    assert ", at most " in line and line.endswith(" left; check at step 40: drop 0.4")


def test_track_yields_everything_and_a_failed_phase_has_no_end_line(caplog):
    caplog.set_level(logging.INFO, logger="ila.progress")
    assert list(track(range(5), "pairs", unit="pair")) == [0, 1, 2, 3, 4]
    assert _progress_lines(caplog)[-1].startswith("pairs: 5 pairs in ")
    caplog.clear()
    with pytest.raises(RuntimeError), Progress("broken", 3, bar=False, interval=0) as progress:
        progress.advance()
        raise RuntimeError("stop")
    assert [line for line in _progress_lines(caplog) if " in " in line] == []


def test_only_the_main_process_reports(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="ila.progress")
    monkeypatch.setenv("RANK", "1")
    with Progress("rank one", 2, bar=False, interval=0) as progress:
        progress.advance(2)
    assert _progress_lines(caplog) == []


def test_the_interval_comes_from_the_environment_and_bad_values_are_errors(monkeypatch):
    monkeypatch.delenv("ILA_PROGRESS_INTERVAL", raising=False)
    assert progress_interval() == 20
    monkeypatch.setenv("ILA_PROGRESS_INTERVAL", "2.5")
    assert progress_interval() == 2.5
    for bad in ("soon", "-1", "nan", "inf"):
        monkeypatch.setenv("ILA_PROGRESS_INTERVAL", bad)
        with pytest.raises(IlaError, match="ILA_PROGRESS_INTERVAL"):
            progress_interval()


def test_a_bad_interval_is_refused_before_any_work(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ILA_PROGRESS_INTERVAL", "often")
    out = tmp_path / "o"
    assert main(["score", "--model", str(tiny_model_dir), *TINY, "--output-dir", str(out)]) == 2
    assert "ILA_PROGRESS_INTERVAL='often'" in capsys.readouterr().err
    assert not out.exists()


def test_durations_read_as_the_readme_writes_them():
    assert format_duration(4.24) == "4.2 s"
    assert format_duration(42.4) == "42 s"
    assert format_duration(279) == "4 min 39 s"
    assert format_duration(7500) == "2 h 05 min"


def _run_piped(argv, tmp_path, interval="0"):
    """Run the CLI with stdout and stderr on pipes; returns (stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "HF_HUB_DISABLE_PROGRESS_BARS")}
    env["ILA_PROGRESS_INTERVAL"] = interval
    done = subprocess.run(
        [sys.executable, "-m", "ila", *argv],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, done.stderr


def test_a_piped_run_logs_the_progress_of_every_long_phase(tiny_model_dir, tmp_path):
    """`ila run` into a pipe: every training stage and evaluation phase logs its progress
    (done/total, rate, time left) and its end, and the run ends with its wall time."""
    argv = ["run", "--model", str(tiny_model_dir), *TINY, "--max-steps", "2"]
    argv += ["--stage1-max-steps", "5", "--stage1-window", "2"]  # a stopping check at step 4
    argv += ["--eval-generate-examples", "2", "--eval-max-new-tokens", "4"]
    out, err = _run_piped([*argv, "--output-dir", str(tmp_path / "o")], tmp_path)
    lines = [line for line in err.splitlines() if line.startswith("INFO ila.progress: ")]
    text = "\n".join(lines)
    rate = r"[\d.]+ (steps/s|s/step)"
    # Stage 1 stops at the stability rule or its cap of 5: a bound, with its stopping checks.
    assert re.search(
        rf"stage 1: 1 of at most 5 steps \(20%\), {rate}, at most [\d.]+ s left; "
        "no stopping check yet",
        text,
    ), text
    assert re.search(r"stage 1: 4 of at most 5 steps .*; check at step 4: drop ", text) or (
        "epsilon-stable at step 4" in text
    ), text
    assert re.search(r"stage 1: [45] steps in [\d.]+ s \(.*\); (epsilon-stable|cap reached)", text)
    assert re.search(rf"stage 2: 1 of 3 steps \(33%\), {rate}, [\d.]+ s left", text)
    assert re.search(r"stage 2: 3 steps in ", text)
    assert re.search(r"fine-tune finetune: 1 of 2 steps \(50%\)", text)
    assert re.search(r"fine-tune finetune-all-units: 2 steps in ", text)
    # Three variants evaluated: loss batches and greedy answers, each with its end line.
    assert len(re.findall(r"held-out loss: \d+ examples in ", text)) == 3, text
    assert len(re.findall(r"greedy answers: 2 examples in ", text)) == 3, text
    assert re.search(r"\n  wall time: (\d+ min )?[\d.]+ s\n$", out), out
    assert "\r" not in err and "{'loss'" not in err  # no bars, no printed dict per step


def test_a_piped_evaluation_logs_progress_within_the_interval(tiny_model_dir, tmp_path):
    """With the default interval (20 s) a short evaluation logs each phase's end line
    only; multiple choice reports its questions."""
    mc = tmp_path / "mc"
    mc.mkdir()
    rows = [f"Question {i}?,red,blue,green,black,A" for i in range(10)]
    (mc / "colors_test.csv").write_text("\n".join(rows) + "\n")
    argv = ["eval", "--model", str(tiny_model_dir), "--eval-mc-data", str(mc)]
    argv += ["--eval-batch-size", "3", "--output-dir", str(tmp_path / "ev")]
    _, err = _run_piped(argv, tmp_path, interval="20")
    lines = [line for line in err.splitlines() if "ila.progress" in line]
    assert len(lines) == 1 and re.search(r"multiple choice: 10 questions in ", lines[0]), err
