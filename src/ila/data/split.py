"""A deterministic train/held-out split and the fingerprint of a data set.

A leaf of :mod:`ila.data`: the supervised loader (:mod:`ila.data.loading`) and the
preference loader (:mod:`ila.data.preference`) both split with it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence

from ila.config import setting
from ila.data.formats import Example
from ila.errors import IlaError, short_repr

__all__ = ["data_fingerprint", "split_examples"]


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
        raise IlaError(
            setting("data", "eval_fraction"), f" must be in [0, 1), got {short_repr(eval_fraction)}"
        )
    n = len(examples)
    num_eval = max(1, round(eval_fraction * n)) if eval_fraction > 0 else 0
    if n - num_eval < 1:
        raise IlaError(
            setting("data", "eval_fraction"),
            f" {eval_fraction} of {n} examples leaves no training example; lower ",
            setting("data", "eval_fraction"),
            " or add data",
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


def _canonical_json(examples: Iterable[Example]) -> str:
    # Preference pairs (ila.data.preference) describe their own content.
    rows = [
        e.canonical()
        if hasattr(e, "canonical")
        else {"answer": e.answer, "messages": [dict(m) for m in e.messages]}
        for e in examples
    ]
    return json.dumps(rows, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
