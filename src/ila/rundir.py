"""The run directory contract: every command writes only under its ``--output-dir``.

Files are written atomically (temporary file in the same directory, then ``os.replace``),
so a crash never leaves a half-written artifact that looks complete. A run directory holds
``run_state.json`` describing which stages have completed; a directory that holds another
run is refused unless ``overwrite`` is set.

``overwrite`` is safe: it replaces only a directory that holds an ila run (its
``run_state.json``) or, for ``ila compare`` / ``ila report``, only ila's report files, and it
deletes only the entries ila writes there (:data:`RUN_ENTRIES`). It refuses, before anything
is loaded or deleted, the current, home and root directories, a symlink, a directory that
contains the job's own inputs and a directory holding anything else.

While a job runs, its main process holds an exclusive ``fcntl.flock`` on ``.ila.lock`` in
the run directory (pid and command written into it); a second job into the same directory
is refused. The file is deleted when the job ends; the operating system releases the lock
when the process ends, however it ends (a file left by a killed job locks nothing).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not locked
    fcntl = None  # type: ignore[assignment]

import yaml

from ila.errors import IlaError
from ila.model.identity import ModelFingerprint, check_same_model
from ila.run_files import (
    CONFIG_FILE,
    DATA_FILE,
    ENVIRONMENT_FILE,
    FINETUNE_SUMMARY_FILE,
    LOCK_FILE,
    LOG_FILE,
    METRICS_FILE,
    RUN_STATE_FILE,
    SELECTION_FILE,
)

__all__ = [
    "LOCK_FILE",
    "REPORT_ENTRIES",
    "RUN_ENTRIES",
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
    "record_model",
    "release_run_lock",
    "require_resumable",
    "require_same_model",
    "require_schema_version",
    "run_directory",
    "run_lock",
    "runs_locked",
    "storage_failure",
    "write_environment",
    "write_yaml",
]


# Every top-level name ila writes into a run directory, per command (the command recorded
# in run_state.json). --overwrite deletes these and nothing else.
_COMMON_ENTRIES = frozenset(
    {RUN_STATE_FILE, CONFIG_FILE, ENVIRONMENT_FILE, LOG_FILE, METRICS_FILE, LOCK_FILE}
)
_SCORE_ENTRIES = _COMMON_ENTRIES | {
    DATA_FILE,
    "stage1",
    "stage2",
    "layer_scores.json",
    "report",
    "seeds",
    SELECTION_FILE,  # `ila select RUN` writes it beside the scores
}
RUN_ENTRIES: dict[str, frozenset[str]] = {
    "score": _SCORE_ENTRIES,
    "score-member": _SCORE_ENTRIES,
    "run": _SCORE_ENTRIES | {"finetune", "finetune-all-units", "eval"},
    "finetune": _COMMON_ENTRIES
    | {
        SELECTION_FILE,
        "trainer",
        "adapter",
        "changed_weights",
        "merged",
        FINETUNE_SUMMARY_FILE,
    },
    "eval": _COMMON_ENTRIES | {"eval_results.json", "generations.jsonl"},
}
# `ila compare` and `ila report` write a directory of report files (no run_state.json).
REPORT_ENTRIES: dict[str, frozenset[str]] = {
    "compare": frozenset(
        {"comparison.json", "comparison.md", "pairwise.png", "overlap_curves.png", "units.png"}
    ),
    "report": frozenset(
        {
            "report.html",
            "report.md",
            "ranking.md",
            "blocks.png",
            "heatmap.png",
            "stage1_loss.png",
            "stage2_gates.png",
        }
    ),
}
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
def log_to_file(output_dir: Path, name: str = LOG_FILE) -> Iterator[Path]:
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


def check_output_dir(
    output_dir: Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    inputs: Iterable[str | Path | None] = (),
    report: str | None = None,
) -> None:
    """Refuse, before any work, an output dir this job may not write (see prepare_output_dir).

    Refused: a file; a directory whose parent cannot be written; a directory another job
    holds (its lock); a directory that holds files, unless ``overwrite`` or ``resume``; and
    with ``overwrite``, any directory :func:`_check_overwrite` refuses. ``inputs`` are the
    job's input paths (model, data, scores, adapter); ``report`` names the report command
    (``compare`` or ``report``) for directories without a run_state.json.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise IlaError(f"--output-dir {output_dir} is a file; pass a directory")
    _require_writable(output_dir)
    _refuse_if_locked(output_dir)
    occupied = bool(_entries(output_dir))
    if occupied and not (overwrite or resume):
        raise IlaError(
            f"--output-dir {output_dir} already holds files; pass --overwrite to replace "
            "them, --resume to continue, or choose another directory"
        )
    if occupied and overwrite:
        _check_overwrite(output_dir, inputs=inputs, report=report)


def _entries(output_dir: Path) -> list[Path]:
    """The entries of ``output_dir`` other than its lock file (none if it does not exist)."""
    if not output_dir.is_dir():
        return []
    return sorted(p for p in output_dir.iterdir() if p.name != LOCK_FILE)


def _require_writable(output_dir: Path) -> None:
    """Refuse an output dir that cannot be created or written, before the model is loaded."""
    existing = output_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise IlaError(f"--output-dir {output_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "it" if existing == output_dir else f"its parent {existing}"
        raise IlaError(
            f"--output-dir {output_dir}: cannot write in {what} (read-only or no permission); "
            "choose a writable directory"
        )


def _is_ila_temporary(name: str, known: frozenset[str]) -> bool:
    """A temporary file or directory of an interrupted atomic write of a known entry."""
    return name.endswith(".tmp") and any(name.startswith(f".{entry}.") for entry in known)


def _known_entries(output_dir: Path, report: str | None) -> frozenset[str]:
    """The names ila writes in ``output_dir``; refuse a directory that holds no ila output."""
    state_file = output_dir / RUN_STATE_FILE
    if state_file.is_file():
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            state = None
        command = state.get("command") if isinstance(state, dict) else None
        if command not in RUN_ENTRIES:
            raise IlaError(
                f"--overwrite: {state_file} is not a run state ila wrote (command {command!r}); "
                "delete the directory yourself if it is no longer needed, or choose another"
            )
        return RUN_ENTRIES[command]
    if report is not None:
        known = REPORT_ENTRIES[report]
        if all(p.name in known or _is_ila_temporary(p.name, known) for p in _entries(output_dir)):
            return known
    raise IlaError(
        f"--overwrite: {output_dir} holds files but no {RUN_STATE_FILE}, so it is not an ila "
        "run directory; ila replaces only its own runs: choose another --output-dir (or empty "
        "this one yourself)"
    )


def _check_overwrite(
    output_dir: Path, *, inputs: Iterable[str | Path | None], report: str | None
) -> None:
    """Refuse to replace a directory whose deletion could lose anything ila did not write."""
    if output_dir.is_symlink():
        raise IlaError(
            f"--overwrite: --output-dir {output_dir} is a symbolic link; pass the directory it "
            f"points to ({output_dir.resolve()}) or a new directory"
        )
    resolved = output_dir.resolve()
    home = Path.home().resolve()
    cwd = Path.cwd().resolve()
    special = (
        "a filesystem root"
        if resolved == resolved.parent
        else "your home directory"
        if resolved == home
        else "the current directory"
        if resolved == cwd
        else "a directory that contains the current directory"
        if resolved in cwd.parents
        else None
    )
    if special is not None:
        raise IlaError(
            f"--overwrite: --output-dir {output_dir} is {special}; ila never replaces it: "
            "pass a dedicated run directory such as runs/my-run"
        )
    for item in inputs:
        if item is None or str(item) == "":
            continue
        path = Path(item).expanduser()
        if not path.exists():
            continue  # a hub id, a preset name: not a file here
        source = path.resolve()
        if source == resolved or resolved in source.parents:
            raise IlaError(
                f"--overwrite: --output-dir {output_dir} contains the input {item}; replacing "
                "the run would delete it: move the input out or choose another --output-dir"
            )
    known = _known_entries(output_dir, report)
    unknown = [
        p.name
        for p in _entries(output_dir)
        if p.name not in known and not _is_ila_temporary(p.name, known)
    ]
    if unknown:
        shown = ", ".join(unknown[:5]) + (
            f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        )
        raise IlaError(
            f"--overwrite: {output_dir} holds files ila did not write ({shown}); move them out "
            "or choose another --output-dir"
        )


def _remove_ila_entries(output_dir: Path, known: frozenset[str]) -> None:
    """Delete the entries ila wrote in ``output_dir`` (never the lock, never anything else)."""
    for path in _entries(output_dir):
        if path.name not in known and not _is_ila_temporary(path.name, known):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def prepare_output_dir(
    output_dir: Path,
    *,
    command: str,
    overwrite: bool = False,
    resume: bool = False,
    inputs: Iterable[str | Path | None] = (),
) -> Path:
    """Create ``output_dir`` for a new run of ``command`` and lock it for this process.

    A directory that already holds files is refused unless ``overwrite`` (delete what ila
    wrote there and start again) or ``resume`` (continue the run recorded there) is given.
    Every check is made again under the lock, before anything is deleted.
    """
    output_dir = Path(output_dir)
    inputs = list(inputs)
    check_output_dir(output_dir, overwrite=overwrite, resume=resume, inputs=inputs)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IlaError(f"--output-dir {output_dir}: cannot create it ({exc.strerror})") from exc
    run_lock(output_dir, command)
    check_output_dir(output_dir, overwrite=overwrite, resume=resume, inputs=inputs)
    occupied = bool(_entries(output_dir))
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
        _remove_ila_entries(output_dir, _known_entries(output_dir, None))
    atomic_write_json(
        output_dir / RUN_STATE_FILE,
        {"command": command, "completed_stages": [], "started_at": _now()},
    )
    return output_dir


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}
_STORAGE_MESSAGES = (
    "No space left on device",
    "File too large",
    "Disk quota exceeded",
    "Read-only file system",
)


def storage_failure(exc: BaseException) -> str | None:
    """What stopped a write, if ``exc`` (or what caused it) is a full disk, a file-size
    limit, a quota or a read-only file system; else ``None``.

    Writers report these differently: ``OSError`` (Python), ``SafetensorError`` and the
    ``RuntimeError`` of ``torch.save`` (their message holds the system's text).
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _STORAGE_ERRNOS:
            where = f" {seen.filename}" if seen.filename else ""
            return f"cannot write{where}: {seen.strerror}"
        text = str(seen)
        for message in _STORAGE_MESSAGES:
            if message in text:
                return f"a write failed: {message} ({text.splitlines()[0][:200]})"
        seen = seen.__cause__ or seen.__context__
    return None


# -- the run lock --------------------------------------------------------------------------

# Locks this process holds: resolved run directory -> open lock file descriptor. flock locks
# belong to an open file description, so a second open() in this process would conflict
# with the first: the same directory is locked once and shared.
_HELD_LOCKS: dict[Path, int] = {}
_LOCK_SCOPE_DEPTH = 0
_F = TypeVar("_F", bound=Callable[..., Any])


def run_lock(output_dir: Path, command: str) -> None:
    """Take the exclusive lock of ``output_dir`` (no-op if this process holds it already).

    The lock file records this process's pid and command line, which a refused job names.
    It is released by :func:`release_run_lock`, at the end of the outermost
    :func:`runs_locked` call, or by the operating system when the process exits.
    """
    if fcntl is None:
        return
    key = Path(output_dir).resolve()
    if key in _HELD_LOCKS:
        return
    path = key / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The holder before us deletes the file as it lets go: the lock counts only if
            # the file we locked is still the one at ``path``.
            current = os.stat(path).st_ino if path.exists() else None
        except BlockingIOError:
            os.close(fd)
            raise IlaError(_locked_message(Path(output_dir), path)) from None
        except BaseException:
            os.close(fd)
            raise
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)
    holder = {"pid": os.getpid(), "command": command, "argv": sys.argv, "started_at": _now()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
    _HELD_LOCKS[key] = fd


def release_run_lock(output_dir: Path) -> None:
    """Release the lock this process holds on ``output_dir`` (if any)."""
    key = Path(output_dir).resolve()
    fd = _HELD_LOCKS.pop(key, None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        (key / LOCK_FILE).unlink()  # while still holding it: see run_lock
    os.close(fd)  # closing the only descriptor releases the flock


def runs_locked(function: _F) -> _F:
    """Decorate a job: locks taken during its outermost call are released when it returns
    or raises (nested jobs, e.g. `ila run` calling score and finetune, keep them)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _LOCK_SCOPE_DEPTH
        before = set(_HELD_LOCKS)
        _LOCK_SCOPE_DEPTH += 1
        try:
            return function(*args, **kwargs)
        finally:
            _LOCK_SCOPE_DEPTH -= 1
            if _LOCK_SCOPE_DEPTH == 0:
                for key in [k for k in _HELD_LOCKS if k not in before]:
                    release_run_lock(key)

    return wrapper  # type: ignore[return-value]


def _refuse_if_locked(output_dir: Path) -> None:
    """Refuse at once a directory whose lock another live process holds."""
    path = output_dir / LOCK_FILE
    if fcntl is None or not path.is_file() or output_dir.resolve() in _HELD_LOCKS:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise IlaError(_locked_message(output_dir, path)) from None
    finally:
        os.close(fd)  # also releases the probe's lock when it was taken


def _read_holder(path: Path, attempts: int = 20) -> dict[str, Any]:
    """The lock holder's record; a holder that has just taken the lock may still be
    writing it, so an empty or partial file is read again for up to about a second."""
    for attempt in range(attempts):
        try:
            holder = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(holder, dict) and "pid" in holder:
                return holder
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass
        if attempt + 1 < attempts:
            time.sleep(0.05)
    return {}


def _locked_message(output_dir: Path, path: Path) -> str:
    holder = _read_holder(path)
    who = f"pid {holder.get('pid', 'unknown')}"
    if holder.get("command"):
        who += f", ila {holder['command']}"
    argv = [str(a) for a in holder.get("argv") or []]
    if len(argv) > 1:
        shown = " ".join([Path(argv[0]).name, *argv[1:]])
        who += f", started as '{shown if len(shown) <= 160 else shown[:157] + '...'}'"
    return (
        f"--output-dir {output_dir} is in use by another ila job ({who}); wait for it to "
        "finish or choose another directory"
    )


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
    if is_main_process():  # the other ranks of a launch never write (nor lock) the run
        _require_writable(output_dir)
        _refuse_if_locked(output_dir)
    if finished_stage is not None and finished_stage in state.get("completed_stages", []):
        raise IlaError(
            f"--resume: the run in {output_dir} has finished; nothing to resume (pass "
            "--overwrite to run it again)"
        )
    recorded_path = output_dir / CONFIG_FILE
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


@contextlib.contextmanager
def run_directory(
    output_dir: Path,
    *,
    command: str,
    resolved: Mapping[str, Any],
    overwrite: bool = False,
    resume: bool = False,
    inputs: Iterable[str | Path | None] = (),
    environment: Mapping[str, Any] | None = None,
) -> Iterator[bool]:
    """The run-directory lifecycle every job shares; yields whether this is the main process.

    The main process prepares and locks ``output_dir`` (:func:`prepare_output_dir`), logs
    into it for the duration, and for a new run (not ``resume``) writes ``config.yaml``
    (``resolved``, every setting) and ``environment.json`` (with ``environment`` facts).
    Other ranks of a launch only run the block. The job marks its stages itself.
    """
    output_dir = Path(output_dir)
    main = is_main_process()
    if main:
        prepare_output_dir(
            output_dir, command=command, overwrite=overwrite, resume=resume, inputs=inputs
        )
    with log_to_file(output_dir) if main else contextlib.nullcontext():
        if main and not resume:
            write_yaml(output_dir / CONFIG_FILE, dict(resolved))
            write_environment(output_dir, environment)
        yield main


def record_model(output_dir: Path, fingerprint: ModelFingerprint) -> None:
    """Record in the run state which model the run in ``output_dir`` uses
    (ila.model.identity), for ``--resume`` to check."""
    state = read_run_state(output_dir) or {"completed_stages": []}
    state["model_fingerprint"] = fingerprint.to_dict()
    atomic_write_json(Path(output_dir) / RUN_STATE_FILE, state)


def require_same_model(output_dir: Path, fingerprint: ModelFingerprint) -> None:
    """``--resume``: refuse to continue a run with another model than it started with.

    Runs recorded before ila wrote fingerprints are not checked.
    """
    state = read_run_state(output_dir) or {}
    check_same_model(
        state.get("model_fingerprint"),
        fingerprint,
        what=f"--resume: the run in {output_dir}",
        hint="resume with the model the run started with, or start a new run",
    )


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


def write_environment(output_dir: Path, extra: Mapping[str, Any] | None = None) -> None:
    """Write ``environment.json`` into the run directory, with ``extra`` facts of the run
    (e.g. the training precision chosen for this machine)."""
    atomic_write_json(
        Path(output_dir) / ENVIRONMENT_FILE, {**collect_environment(), **(extra or {})}
    )


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
