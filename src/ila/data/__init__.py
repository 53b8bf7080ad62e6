"""Alignment data: read it, split it, and turn it into training features.

ILA (arXiv 2410.17875, Section 3) fine-tunes LoRA on instruction/chat data and learns
which layers matter for that alignment. This module is the one entry point for the data
side; the work is spread over three modules named for their concept:

- :mod:`ila.data.formats`: the record formats (alpaca, sharegpt, messages,
  prompt-completion, text) and :class:`Example`;
- :mod:`ila.data.sources`: local files, the shipped presets, the datasets hub;
- :mod:`ila.data.tokenization`: templates, assistant-only labels, padding.

Importing it is cheap: torch and datasets are imported only when needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

from ila.data.formats import FORMATS, Example, detect_format, record_to_example
from ila.data.sources import (
    PRESET_ALIASES,
    PRESETS,
    iter_file_records,
    iter_hub_records,
    iter_preset_examples,
    resolve_local_file,
)
from ila.data.tokenization import (
    TEMPLATES,
    PaddingCollator,
    TokenizedData,
    format_prompt,
    prompt_token_ids,
    tokenize_examples,
)
from ila.errors import IlaError, short_repr

__all__ = [
    "FORMATS",
    "PRESETS",
    "PRESET_ALIASES",
    "TEMPLATES",
    "Example",
    "PaddingCollator",
    "TokenizedData",
    "data_fingerprint",
    "format_prompt",
    "load_examples",
    "load_split",
    "prompt_token_ids",
    "split_examples",
    "tokenize_examples",
]

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
        raise IlaError(f"unknown --data-format {format!r}; pass one of {', '.join(FORMATS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise IlaError(f"--limit must be a positive integer or none, got {short_repr(limit)}")
    if not source.strip():
        raise IlaError(f"--data is empty; pass a preset ({', '.join(PRESETS)}) or a file")
    name = PRESET_ALIASES.get(source, source)
    from ila.data.preference import PREFERENCE_PRESETS

    if name in PREFERENCE_PRESETS:
        raise IlaError(f"--data {name} holds preference pairs; pass --objective dpo to train on it")
    if name in PRESETS:
        if format not in ("auto", _PRESET_FORMAT):
            raise IlaError(
                f"data preset {name!r} is stored as {_PRESET_FORMAT!r}; "
                f"leave --data-format auto (got {short_repr(format)})"
            )
        stream: Iterator[Example] = iter_preset_examples(name)
    else:
        path = resolve_local_file(source)
        records = iter_file_records(path) if path else iter_hub_records(source, split=split)
        stream = _convert(records, format)
    examples = list(islice(stream, limit))
    if not examples:
        raise IlaError(f"--data {source!r} holds no usable examples; check the file or the preset")
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


def split_examples(
    examples: Sequence[Example], *, eval_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Split into ``(train, eval)``, deterministically, keeping the input order in each.

    Examples are ranked by a SHA-256 hash of ``seed`` and their content, and the first
    ``round(eval_fraction * n)`` (at least one when ``eval_fraction > 0``) go to eval.
    Hashing content rather than drawing indices means an example lands on the same side
    whatever else the data holds, and duplicates never straddle the split.
    """
    if isinstance(eval_fraction, bool) or not 0.0 <= eval_fraction < 1.0:
        raise IlaError(f"--eval-fraction must be in [0, 1), got {short_repr(eval_fraction)}")
    n = len(examples)
    num_eval = max(1, round(eval_fraction * n)) if eval_fraction > 0 else 0
    if n - num_eval < 1:
        raise IlaError(
            f"--eval-fraction {eval_fraction} of {n} examples leaves no training example; "
            "lower --eval-fraction or add data"
        )

    def rank(index: int) -> tuple[str, int]:
        payload = f"{seed}\0{_canonical_json([examples[index]])}".encode()
        return hashlib.sha256(payload).hexdigest(), index

    eval_indices = set(sorted(range(n), key=rank)[:num_eval])
    train = [e for i, e in enumerate(examples) if i not in eval_indices]
    evaluation = [e for i, e in enumerate(examples) if i in eval_indices]
    return train, evaluation


def data_fingerprint(examples: Sequence[Example]) -> str:
    """First 16 hex digits of the SHA-256 of the examples' canonical JSON.

    Messages and answers count, in order; ``source`` does not, so the same data read
    from another path has the same fingerprint.
    """
    return hashlib.sha256(_canonical_json(examples).encode("utf-8")).hexdigest()[:16]


def _convert(records: Iterable[tuple[str, Any]], fmt: str) -> Iterator[Example]:
    for where, record in records:
        if fmt == "auto":
            fmt = detect_format(record, where)
            logger.info("detected data format %r from %s", fmt, where)
        yield record_to_example(record, fmt, where)


def _canonical_json(examples: Iterable[Example]) -> str:
    # Preference pairs (ila.data.preference) describe their own content.
    rows = [
        e.canonical()
        if hasattr(e, "canonical")
        else {"answer": e.answer, "messages": [dict(m) for m in e.messages]}
        for e in examples
    ]
    return json.dumps(rows, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
