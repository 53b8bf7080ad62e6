"""Read alignment data (a preset, a local file, a hub dataset) as examples, and split it.

The logic behind :func:`ila.data.load_examples` and :func:`ila.data.load_split`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from ila.config import setting
from ila.data.formats import FORMATS, Example, detect_format, record_to_example
from ila.data.sources import (
    PRESET_ALIASES,
    PRESETS,
    iter_file_records,
    iter_hub_records,
    iter_preset_examples,
    resolve_local_file,
)
from ila.data.split import split_examples
from ila.errors import IlaError, short_repr

__all__ = ["load_examples", "load_split"]

logger = logging.getLogger(__name__)

# Every preset is stored as conversations, so "messages" is the only format that fits.
_PRESET_FORMAT = "messages"


def load_examples(
    source: str, *, format: str = "auto", limit: int | None = None, split: str = "train"
) -> list[Example]:
    """Read alignment examples from ``source``.

    ``source`` is, in this order: a preset name (:data:`PRESETS`, or an alias in
    :data:`PRESET_ALIASES`); a local ``.jsonl``, ``.json`` (an array, or an object with a
    ``data`` array), ``.parquet`` or ``.csv`` file, or a directory holding exactly one;
    otherwise a datasets hub name, loaded with ``datasets.load_dataset(source,
    split=split)`` (offline, only from the local cache, failing at once on a miss).

    ``format`` is one of :data:`FORMATS`; ``auto`` detects it from the keys of the first
    record and then every record must fit it. ``limit`` keeps the first ``limit``
    examples and reads no further. No usable example is an error, not an empty run.
    """
    if format not in FORMATS:
        raise IlaError(
            "unknown ",
            setting("data", "data_format"),
            f" {format!r}; pass one of {', '.join(FORMATS)}",
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise IlaError(
            setting("data", "limit"),
            f" must be a positive integer or none, got {short_repr(limit)}",
        )
    if not source.strip():
        raise IlaError(
            setting("data", "data"), f" is empty; pass a preset ({', '.join(PRESETS)}) or a file"
        )
    name = PRESET_ALIASES.get(source, source)
    from ila.data.preference import PREFERENCE_PRESETS

    if name in PREFERENCE_PRESETS:
        raise IlaError(
            setting("data", "data"),
            f" {name} holds preference pairs; pass ",
            setting("train", "objective"),
            " dpo to train on it",
        )
    if name in PRESETS:
        if format not in ("auto", _PRESET_FORMAT):
            raise IlaError(
                f"data preset {name!r} is stored as {_PRESET_FORMAT!r}; leave ",
                setting("data", "data_format"),
                f" auto (got {short_repr(format)})",
            )
        stream: Iterator[Example] = iter_preset_examples(name)
    else:
        path = resolve_local_file(source)
        records = iter_file_records(path) if path else iter_hub_records(source, split=split)
        stream = _convert(records, format)
    examples = list(islice(stream, limit))
    if not examples:
        raise IlaError(
            setting("data", "data"),
            f" {source!r} holds no usable examples; check the file or the preset",
        )
    logger.info("loaded %d examples from %s", len(examples), source)
    return examples


def load_split(data: Any, *, objective: str = "sft") -> tuple[list[Any], list[Any], list[Any]]:
    """The data of ``data`` (a DataConfig) and its training and held-out split: examples,
    or preference pairs (ila.data.preference) under ``--objective dpo``."""
    if objective == "dpo":
        from ila.data.preference import load_preference_pairs, split_pairs

        pairs = load_preference_pairs(data.data, limit=data.limit)
        train, held_out = split_pairs(pairs, eval_fraction=data.eval_fraction, seed=data.split_seed)
        return pairs, train, held_out
    examples = load_examples(data.data, format=data.data_format, limit=data.limit)
    train, held_out = split_examples(
        examples, eval_fraction=data.eval_fraction, seed=data.split_seed
    )
    return examples, train, held_out


def _convert(records: Iterable[tuple[str, Any]], fmt: str) -> Iterator[Example]:
    for where, record in records:
        if fmt == "auto":
            fmt = detect_format(record, where)
            logger.info("detected data format %r from %s", fmt, where)
        yield record_to_example(record, fmt, where)
