"""Progress bars for a person at a terminal, quiet otherwise; --report-to checked early."""

import fcntl
import importlib.util
import os
import pty
import re
import struct
import subprocess
import sys
import termios

from ila.cli import main
from ila.config import TrainConfig
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
