"""Files written whole or not at all, and JSON/YAML read with one-line errors.

A leaf module (it imports only :mod:`ila.errors`): every writer in ila goes through it, so
a crash never leaves a half-written artifact that looks complete. A file is written to a
temporary file in the same directory and moved into place with ``os.replace``; a
directory written by another library (``save_pretrained``) is filled under a temporary
name and renamed at the end (:func:`atomic_directory`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from ila.errors import IlaError

__all__ = [
    "append_jsonl",
    "atomic_directory",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "now",
    "read_json",
    "require_schema_version",
    "storage_failure",
    "write_yaml",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets under this process's umask (``open`` would give it)."""
    return 0o666 & ~_umask()


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
        os.chmod(tmp, file_mode())  # mkstemp makes 0600; give the usual file mode
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


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}
_STORAGE_MESSAGES = (
    "No space left on device",
    "File too large",
    "Disk quota exceeded",
    "Read-only file system",
)
# torch.save's writer reports a short write by position, or as a failed C++ stream, and
# does not pass the system's text on.
_TORCH_WRITE_MESSAGES = ("unexpected pos", "basic_ios::clear: iostream error")


def storage_failure(exc: BaseException) -> str | None:
    """What stopped a write, if ``exc`` (or what caused it) is a full disk, a file-size
    limit, a quota or a read-only file system; else ``None``.

    Writers report these differently: ``OSError`` (Python; its errno), ``SafetensorError``
    (the system's text), and the ``RuntimeError`` of ``torch.save``, whose writer says only
    that a write came up short (``unexpected pos ... vs ...``) or that its stream failed
    (``basic_ios::clear: iostream error``).
    """
    seen: BaseException | None = exc
    while seen is not None:
        number = getattr(seen, "errno", None)
        if number in _STORAGE_ERRNOS:
            filename = getattr(seen, "filename", None)
            where = f" {filename}" if filename else ""
            return f"cannot write{where}: {getattr(seen, 'strerror', None) or os.strerror(number)}"
        text = str(seen)
        first = text.strip().splitlines()[0][:200] if text.strip() else type(seen).__name__
        for message in _STORAGE_MESSAGES:
            if message in text:
                return f"a write failed: {message} ({first})"
        if any(message in text for message in _TORCH_WRITE_MESSAGES):
            return f"a write failed: a file could not be written in full (torch.save: {first})"
        seen = seen.__cause__ or seen.__context__
    return None


def now() -> str:
    """The local time as ISO 8601 with its offset (the timestamps of run records)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
