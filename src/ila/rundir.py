"""The run directory contract: every command writes only under its ``--output-dir``.

Files are written atomically (temporary file in the same directory, then ``os.replace``),
so a crash never leaves a half-written artifact that looks complete. A run directory holds
``run_state.json`` describing which stages have completed; a directory that holds another
run is refused unless ``overwrite`` is set.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from ila.errors import IlaError

__all__ = [
    "RUN_STATE_FILE",
    "append_jsonl",
    "atomic_directory",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_output_dir",
    "collect_environment",
    "is_main_process",
    "log_to_file",
    "mark_stage",
    "prepare_output_dir",
    "read_json",
    "read_run_state",
    "require_resumable",
    "require_schema_version",
    "write_environment",
    "write_yaml",
]

RUN_STATE_FILE = "run_state.json"
_TRACKED_PACKAGES = (
    "ila",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "safetensors",
    "tokenizers",
    "gguf",
    "numpy",
)


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a torchrun / accelerate launch (env RANK).

    Only the main process writes the run directory; the other ranks train and compute the
    same values but leave the files to rank 0.
    """
    return int(os.environ.get("RANK", "0")) == 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        # Remove the temporary file, then let the original error propagate unchanged.
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory that becomes ``path`` only if the block succeeds.

    For artifacts written by other libraries (``save_pretrained``): a crash leaves a
    hidden temporary directory, never a complete-looking ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextlib.contextmanager
def log_to_file(output_dir: Path, name: str = "ila.log") -> Iterator[Path]:
    """Copy the ``ila`` loggers' records (INFO and above) into ``output_dir/name``."""
    path = Path(output_dir) / name
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("ila")
    previous = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        handler.close()


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically. NaN/inf are refused, not written."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_yaml(path: Path, obj: Any) -> None:
    """Write ``obj`` as YAML atomically (key order preserved)."""
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))


def read_json(path: Path) -> Any:
    """Read a JSON file; a missing or malformed file is an :class:`IlaError`."""
    path = Path(path)
    if not path.is_file():
        raise IlaError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise IlaError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc


def require_schema_version(data: Any, expected: int, *, origin: str, command: str) -> None:
    """Refuse a JSON artifact written under another schema version (or not a mapping)."""
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != expected:
        raise IlaError(
            f"{origin}: schema_version {version!r} is not supported (this ila reads "
            f"{expected}); re-run '{command}' with this version"
        )


def append_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Append rows to a JSONL log (logs are append-only; a torn last line is tolerated)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(dict(row), allow_nan=False) + "\n")


def read_run_state(output_dir: Path) -> dict[str, Any] | None:
    """Return the run state of ``output_dir`` or ``None`` when it holds no run."""
    state = Path(output_dir) / RUN_STATE_FILE
    return read_json(state) if state.is_file() else None


def check_output_dir(output_dir: Path, *, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse, before any work, an output dir that holds another run (see prepare_output_dir)."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise IlaError(f"--output-dir {output_dir} is a file; pass a directory")
    occupied = output_dir.is_dir() and any(output_dir.iterdir())
    if occupied and not (overwrite or resume):
        raise IlaError(
            f"--output-dir {output_dir} already holds files; pass --overwrite to replace "
            "them, --resume to continue, or choose another directory"
        )


def prepare_output_dir(
    output_dir: Path, *, command: str, overwrite: bool = False, resume: bool = False
) -> Path:
    """Create ``output_dir`` for a new run of ``command``.

    A directory that already holds files is refused unless ``overwrite`` (delete it and
    start again) or ``resume`` (continue the run recorded there) is given.
    """
    output_dir = Path(output_dir)
    check_output_dir(output_dir, overwrite=overwrite, resume=resume)
    occupied = output_dir.is_dir() and any(output_dir.iterdir())
    if occupied and resume:
        state = read_run_state(output_dir)
        if state is None:
            raise IlaError(f"--resume: {output_dir} holds no {RUN_STATE_FILE}; nothing to resume")
        if state.get("command") != command:
            raise IlaError(
                f"--resume: {output_dir} holds an 'ila {state.get('command')}' run, "
                f"not 'ila {command}'"
            )
        return output_dir
    if occupied:
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        output_dir / RUN_STATE_FILE,
        {"command": command, "completed_stages": [], "started_at": _now()},
    )
    return output_dir


def require_resumable(
    output_dir: Path, resolved: Mapping[str, Any], *, finished_stage: str | None
) -> dict[str, Any]:
    """Check that ``--resume`` can continue the run in ``output_dir``; return its run state.

    Refused: a directory without a run, a run that completed ``finished_stage`` (nothing
    left to do), and a run started with other settings than ``resolved`` (the config the
    command would write): the first setting that differs is named by its flag.
    """
    output_dir = Path(output_dir)
    state = read_run_state(output_dir)
    if state is None:
        raise IlaError(f"--resume: {output_dir} holds no {RUN_STATE_FILE}; nothing to resume")
    if finished_stage is not None and finished_stage in state.get("completed_stages", []):
        raise IlaError(
            f"--resume: the run in {output_dir} has finished; nothing to resume (pass "
            "--overwrite to run it again)"
        )
    recorded_path = output_dir / "config.yaml"
    if not recorded_path.is_file():
        raise IlaError(
            f"--resume: {recorded_path} not found; the run stopped before it began, so start "
            "it again with --overwrite"
        )
    recorded = yaml.safe_load(recorded_path.read_text(encoding="utf-8")) or {}
    for key, was, now in _differences(recorded, dict(resolved)):
        raise IlaError(
            f"--resume: {_flag_of(key)} is {now!r} here but {was!r} in {recorded_path}; "
            "resume with the settings the run started with, or start a new run"
        )
    return state


def _differences(
    recorded: Mapping[str, Any], resolved: Mapping[str, Any], prefix: str = ""
) -> Iterator[tuple[str, Any, Any]]:
    for key in list(resolved) + [k for k in recorded if k not in resolved]:
        was, now = recorded.get(key), resolved.get(key)
        if isinstance(was, Mapping) and isinstance(now, Mapping):
            yield from _differences(was, now, f"{prefix}{key}.")
        elif was != now:
            yield f"{prefix}{key}", was, now


def _flag_of(key: str) -> str:
    from ila.config import flag_name

    section, _, name = key.partition(".")
    return flag_name(section, name) if name and "." not in name else "--" + key.replace("_", "-")


def mark_stage(output_dir: Path, stage: str) -> None:
    """Record that ``stage`` finished and its artifacts are complete."""
    state = read_run_state(output_dir) or {"completed_stages": []}
    if stage not in state["completed_stages"]:
        state["completed_stages"].append(stage)
    state["updated_at"] = _now()
    atomic_write_json(Path(output_dir) / RUN_STATE_FILE, state)


def collect_environment() -> dict[str, Any]:
    """Library versions, Python, platform, git sha and devices, for reproducibility."""
    versions: dict[str, str | None] = {}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
        "git_sha": _git_sha(),
        "argv": sys.argv,
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE"),
    }
    if "torch" in sys.modules:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        env["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            env["cuda_devices"] = [
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            ]
    return env


def write_environment(output_dir: Path) -> None:
    """Write ``environment.json`` into the run directory."""
    atomic_write_json(Path(output_dir) / "environment.json", collect_environment())


def _git_sha() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
