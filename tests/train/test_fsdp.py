"""FSDP2: what ila reads and saves from a sharded model equals one unsharded process.

accelerate's FSDP plugin (through which the Trainer shards a model) does not run on a CPU
(docs/distributed.md), so the CPU test shards the model with PyTorch's own FSDP2
``fully_shard`` over gloo, the way the plugin wraps it (each decoder block, then the
root), and runs ila's readers and writers on it (tests/train/fsdp_worker.py): the stage-1
update norms, the saved adapter, the stage-2 gates with the budget (gates attached
before sharding, and after it as when stage 1's Trainer sharded the model first), the
projected scores and a fine-tune's saved weights. A control run without the gradient
averaging of unmanaged gates shows the comparison can fail.

Where two CUDA GPUs are present, the last test runs ``ila score`` and ``ila finetune``
through ``accelerate launch`` with examples/accelerate/fsdp.yaml against one process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ila.cli import main
from ila.errors import IlaError
from ila.train.parallel import require_supported_launch

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WORKER = Path(__file__).resolve().parent / "fsdp_worker.py"

pytestmark = pytest.mark.skipif(
    not (BIN / "torchrun").exists(), reason="torchrun not installed in this environment"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def _worker(out: Path, *flags: str, processes: int = 2) -> dict:
    out.mkdir(parents=True)
    if processes == 1:
        command = [sys.executable, str(WORKER), "--reference"]
    else:
        command = [str(BIN / "torchrun"), "--nproc_per_node", str(processes),
                   "--master_port", str(_free_port()), str(WORKER)]  # fmt: skip
    result = subprocess.run(
        [*command, "--out", str(out), *flags],
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


def _max_diff(a, b) -> float:
    return float((torch.tensor(a) - torch.tensor(b)).abs().max())


def _max_file_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys()
    return max(float((x[k] - y[k]).abs().max()) for k in x)


@pytest.mark.slow
@pytest.mark.parametrize("gates", ["after", "before"])
def test_fsdp2_reads_and_saves_what_one_process_does(tmp_path, gates):
    sharded = _worker(tmp_path / "fsdp", "--gates", gates)
    single = _worker(tmp_path / "one", "--gates", gates, processes=1)
    assert sharded["world"] == 2
    # Gates added after sharding are averaged by ila's hook; added before, FSDP shards them.
    assert (sharded["hooked"], sharded["sharded_gates"]) == (
        (1, "Parameter") if gates == "after" else (0, "DTensor")
    )
    assert _max_diff(sharded["norms"], single["norms"]) < 1e-5
    assert _max_diff(sharded["gates"], single["gates"]) < 1e-5
    assert _max_diff(sharded["projected"], single["projected"]) < 1e-4
    for name in ("adapter/adapter_model.safetensors", "tuned.safetensors"):
        assert _max_file_diff(tmp_path / "fsdp" / name, tmp_path / "one" / name) < 1e-4
    saved = json.loads((tmp_path / "fsdp" / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 8


@pytest.mark.slow
def test_unsynchronised_gates_would_not_match(tmp_path):
    # The control: without the averaging hook each process's gates follow its own half of
    # the batch, and the comparison above fails.
    unsynced = _worker(tmp_path / "fsdp", "--gates", "after", "--no-average")
    single = _worker(tmp_path / "one", "--gates", "after", processes=1)
    assert unsynced["hooked"] == 0
    assert _max_diff(unsynced["gates"], single["gates"]) > 1e-5


@pytest.fixture()
def fsdp_launch(monkeypatch):
    """The environment `accelerate launch` with examples/accelerate/fsdp.yaml sets, on a
    machine that reports CUDA (the CPU refusal comes first otherwise)."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"command": "eval"}, "ila eval loads the whole model"),
        ({"command": "run", "evaluate": True}, "turn off --evaluate"),
        ({"scorer": "grad-norm"}, "--scorer grad-norm reads whole weights"),
        ({"stage1_method": "full"}, "--stage1-method lora under FSDP"),
        ({"quantization": "nf4"}, "--quantization nf4 under FSDP"),
        ({"command": "finetune", "merge": True}, "--merge under FSDP"),
    ],
)
def test_fsdp_refuses_what_needs_whole_weights_in_one_process(fsdp_launch, kwargs, words):
    with pytest.raises(IlaError) as info:
        require_supported_launch("auto", **kwargs)
    assert words in info.value.render("flag")  # as the command line prints it


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"scorer": "lora-norm", "project_budget": True},
        {"command": "finetune"},
        {"command": "run", "evaluate": False},
    ],
)
def test_fsdp2_accepts_the_supported_stages(fsdp_launch, kwargs):
    require_supported_launch("auto", **kwargs)


def test_fsdp_version_1_is_refused(fsdp_launch, monkeypatch):
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(IlaError, match="fsdp_version: 2"):
        require_supported_launch("auto")


def test_zero3_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(IlaError, match="DeepSpeed's own buffers"):
        require_supported_launch("auto")


def test_fsdp_refusal_on_the_cli_writes_nothing(fsdp_launch, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["score", "--model", str(tiny_model_dir), "--scorer", "snr", "--output-dir", str(out)]
    assert main(argv) == 2
    assert "--scorer snr reads whole weights" in capsys.readouterr().err
    assert not out.exists()


def _gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.skipif(_gpus() < 2, reason="needs 2 CUDA GPUs (accelerate's FSDP needs GPUs)")
def test_fsdp_launch_on_two_gpus_matches_one_process(tiny_model_dir, tmp_path):
    """`ila score` and `ila finetune` under accelerate's FSDP2 on 2 GPUs against 1 GPU."""
    accelerate = [str(BIN / "accelerate"), "launch", "--config_file",
                  str(REPO / "examples/accelerate/fsdp.yaml"), "--num_processes", "2",
                  "--main_process_port", str(_free_port()), "-m", "ila"]  # fmt: skip
    common = ["--model", str(tiny_model_dir), "--data", "ila-instruct", "--limit", "64",
              "--max-length", "64", "--stage1-max-steps", "20", "--stage2-steps", "10"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}

    def run(command: list[str]) -> None:
        result = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env)
        assert result.returncode == 0, result.stderr[-3000:]

    single = [sys.executable, "-m", "ila"]
    run([*single, "score", *common, "--batch-size", "4", "--output-dir", str(tmp_path / "one")])
    run([*accelerate, "score", *common, "--batch-size", "2", "--output-dir", str(tmp_path / "two")])
    one = json.loads((tmp_path / "one" / "layer_scores.json").read_text())
    two = json.loads((tmp_path / "two" / "layer_scores.json").read_text())
    names = [u["name"] for u in one["units"]]
    assert names == [u["name"] for u in two["units"]]
    importance = [[u["importance"] for u in run["units"]] for run in (one, two)]
    assert _max_diff(*importance) < 1e-2
    tune = ["finetune", "--scores", str(tmp_path / "one"), "--tune-top-fraction", "0.3",
            "--max-steps", "10", *common[:8]]  # fmt: skip
    run([*single, *tune, "--batch-size", "4", "--output-dir", str(tmp_path / "ft-one")])
    run([*accelerate, *tune, "--batch-size", "2", "--output-dir", str(tmp_path / "ft-two")])
    s1 = json.loads((tmp_path / "ft-one" / "finetune_summary.json").read_text())
    s2 = json.loads((tmp_path / "ft-two" / "finetune_summary.json").read_text())
    assert s2["eval_loss"] == pytest.approx(s1["eval_loss"], rel=1e-2)
    assert (
        _max_file_diff(
            tmp_path / "ft-one" / "adapter" / "adapter_model.safetensors",
            tmp_path / "ft-two" / "adapter" / "adapter_model.safetensors",
        )
        < 1e-2
    )


@pytest.mark.skipif(_gpus() < 2, reason="needs 2 CUDA GPUs (accelerate's FSDP needs GPUs)")
def test_fsdp_score_resumes_after_sigkill_like_an_uninterrupted_run(tiny_model_dir, tmp_path):
    """Under accelerate's FSDP2 on 2 GPUs: killed mid stage 1 (SIGKILL to every process) and
    resumed, the run ends with the uninterrupted run's T, loss curve and ranking."""
    import signal
    import time

    accelerate = [str(BIN / "accelerate"), "launch", "--config_file",
                  str(REPO / "examples/accelerate/fsdp.yaml"), "--num_processes", "2",
                  "-m", "ila", "-q", "score", "--model", str(tiny_model_dir)]  # fmt: skip
    args = ["--max-length", "64", "--limit", "80", "--batch-size", "2", "--save-steps", "4",
            "--stage1-learning-rate", "0.01", "--stage1-max-steps", "60",
            "--stage1-min-steps", "30", "--stage1-window", "5", "--stage1-patience", "2",
            "--stage1-epsilon", "0.3", "--stage1-rank-epsilon", "0.5",
            "--stage2-steps", "20"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}

    def launch(out: Path, *extra: str) -> subprocess.Popen:
        port = ["--main_process_port", str(_free_port())]
        command = [*accelerate[:6], *port, *accelerate[6:], "--output-dir", str(out), *args]
        return subprocess.Popen(
            [*command, *extra],
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=(out.parent / f"{out.name}.log").open("w"),
        )

    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert launch(straight).wait(timeout=1800) == 0
    proc = launch(cut)
    deadline = time.monotonic() + 1800
    while not list((cut / "stage1" / "trainer").glob("checkpoint-8/ila_state.json")):
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint to kill at"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert launch(cut, "--resume").wait(timeout=1800) == 0
    one = json.loads((straight / "stage1" / "summary.json").read_text())
    two = json.loads((cut / "stage1" / "summary.json").read_text())
    assert two["T"] == one["T"]
    assert two["loss_curve"] == pytest.approx(one["loss_curve"], abs=1e-4)
    ranking = [json.loads((out / "layer_scores.json").read_text())["ranking"]
               for out in (straight, cut)]  # fmt: skip
    assert ranking[0] == ranking[1]
