"""Preference data for ``--objective dpo``: a prompt, a chosen and a rejected response.

docs/method.md, "Preference optimisation": with ``--objective dpo`` the stages train on
pairs instead of single responses. The record layouts are TRL's, detected from the keys
of the first record:

- explicit prompt: ``prompt`` (a string, or a list of ``{role, content}`` messages ending
  with a user turn) and ``chosen`` / ``rejected`` (each a string, or a list holding one
  assistant message);
- implicit prompt: ``chosen`` and ``rejected`` only, each a whole conversation (a list of
  messages) that share every turn but the final assistant one.

An optional ``answer`` (the checkable answer of the chosen response) is carried through.
Every pair is rendered with the same template as supervised data (ila.data.tokenization),
so SFT and DPO runs on one model see the same prompt format. A record that does not fit is
an :class:`~ila.errors.IlaError` naming its location; a pair whose two responses are the
same is refused (it carries no preference).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from itertools import islice
from typing import Any

from ila.config import setting
from ila.data.sources import iter_file_records, iter_hub_records, resolve_local_file
from ila.errors import IlaError, short_repr

__all__ = [
    "PREFERENCE_PRESETS",
    "PreferencePair",
    "is_preference_record",
    "load_preference_pairs",
    "preference_fingerprint",
    "preference_rows",
    "record_to_pair",
    "split_pairs",
]

log = logging.getLogger(__name__)

PREFERENCE_PRESETS = {
    "ila-preference": (
        "the embedded preference data: the 1,200 ila-instruct tasks, each with its correct "
        "response (chosen) and one giving a plausible wrong answer (rejected); Apache-2.0"
    ),
}
_PRESET_FILES = {"ila-preference": "ila_preference.jsonl"}


@dataclass(frozen=True)
class PreferencePair:
    """One preference: the conversation before the answer, and two assistant replies."""

    prompt: tuple[dict[str, str], ...]
    chosen: str
    rejected: str
    answer: str | None = None
    source: str = ""

    def canonical(self) -> dict[str, Any]:
        """The pair's content (not its source), for fingerprints and the split hash."""
        return {
            "prompt": [dict(m) for m in self.prompt],
            "chosen": self.chosen,
            "rejected": self.rejected,
            "answer": self.answer,
        }


def is_preference_record(record: Any) -> bool:
    """Whether ``record`` has the keys of a preference pair (``chosen`` and ``rejected``)."""
    return isinstance(record, Mapping) and "chosen" in record and "rejected" in record


def record_to_pair(record: Any, where: str) -> PreferencePair:
    """Convert one record (either layout in the module docs) to a :class:`PreferencePair`."""
    if not is_preference_record(record):
        keys = sorted(record) if isinstance(record, Mapping) else type(record).__name__
        raise IlaError(
            f"{where}: a preference record needs 'chosen' and 'rejected' (and 'prompt' unless "
            f"both are whole conversations); got {keys}"
        )
    answer = record.get("answer")
    if answer is not None and not isinstance(answer, (str, int, float)):
        raise IlaError(f"{where}: 'answer' must be a string or a number")
    if "prompt" in record:
        prompt = _prompt(record["prompt"], where)
        chosen = _reply(record["chosen"], "chosen", where)
        rejected = _reply(record["rejected"], "rejected", where)
    else:
        prompt, chosen, rejected = _implicit(record["chosen"], record["rejected"], where)
    if not chosen.strip() or not rejected.strip():
        raise IlaError(f"{where}: 'chosen' and 'rejected' must both be non-empty")
    if chosen == rejected:
        raise IlaError(f"{where}: 'chosen' and 'rejected' are the same text: no preference")
    return PreferencePair(prompt, chosen, rejected, None if answer is None else str(answer), where)


def load_preference_pairs(source: str, *, limit: int | None = None) -> list[PreferencePair]:
    """Read preference pairs from a preset (:data:`PREFERENCE_PRESETS`), a local file or a
    datasets hub name (offline cache only), as ``ila.data.load_examples`` reads SFT data."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise IlaError(
            setting("data", "limit"),
            f" must be a positive integer or none, got {short_repr(limit)}",
        )
    if source in _PRESET_FILES:
        records = _iter_preset(source)
    else:
        path = resolve_local_file(source)
        records = iter_file_records(path) if path else iter_hub_records(source, split="train")
    pairs = [record_to_pair(record, where) for where, record in islice(records, limit)]
    if not pairs:
        raise IlaError(
            setting("data", "data"), f" {source!r} holds no preference pairs; check the file"
        )
    log.info("loaded %d preference pairs from %s", len(pairs), source)
    return pairs


def split_pairs(
    pairs: Sequence[PreferencePair], *, eval_fraction: float, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """``(train, held_out)`` by the same content-hash rule as ``ila.data.split_examples``."""
    from ila.data.split import split_examples

    return split_examples(pairs, eval_fraction=eval_fraction, seed=seed)  # type: ignore[arg-type]


def preference_fingerprint(pairs: Sequence[PreferencePair]) -> str:
    """First 16 hex digits of the SHA-256 of the pairs' content, in order."""
    text = json.dumps([p.canonical() for p in pairs], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def preference_rows(
    pairs: Sequence[PreferencePair],
    tokenizer: Any,
    *,
    template: str = "auto",
    max_length: int | None = None,
) -> list[dict[str, str]]:
    """The pairs as TRL's text layout: ``prompt`` (rendered up to the assistant header)
    and ``chosen`` / ``rejected`` (the rest of each rendered conversation, which ends with
    the template's end of turn), in the template supervised data uses.

    A pair whose two replies the tokenizer turns into the same tokens (e.g. replies that
    differ only in white space a tokenizer drops) carries no preference and is refused
    with its location, as a pair of equal texts is (:func:`record_to_pair`). Pairs whose
    tokens differ only after ``max_length`` (where training cuts them) teach nothing
    either: a warning counts them, and data of only such pairs is refused."""
    from ila.data.tokenization import format_prompt, render_conversation

    rows = []
    cut_alike = 0
    for pair in pairs:
        prompt = format_prompt(list(pair.prompt), tokenizer, template)
        row = {"prompt": prompt}
        for key in ("chosen", "rejected"):
            messages = [*pair.prompt, {"role": "assistant", "content": getattr(pair, key)}]
            text, _ = render_conversation(messages, tokenizer, template)
            if not text.startswith(prompt):
                raise IlaError(
                    "the template does not render a conversation as its prompt followed by "
                    "the reply, so the reply cannot be cut out; pass ",
                    setting("data", "template"),
                    " plain",
                )
            row[key] = text[len(prompt) :].rstrip("\n")
        cut_alike += not _distinct_tokens(pair, row, tokenizer, max_length)
        rows.append(row)
    if cut_alike:
        what = (
            f"{cut_alike} of the {len(rows)} preference pairs differ only after ",
            setting("data", "max_length"),
            f" {max_length} tokens, where training cuts them, so they carry no preference",
        )
        if cut_alike == len(rows):
            raise IlaError("all ", *what, "; raise ", setting("data", "max_length"))
        log.warning("%s; raise --max-length for them to count", what)
    return rows


def _distinct_tokens(
    pair: PreferencePair, row: dict[str, str], tokenizer: Any, max_length: int | None
) -> bool:
    """Whether the pair's replies differ within the first ``max_length`` tokens of prompt +
    reply (as TRL tokenizes and cuts them); replies of the same tokens are refused."""
    chosen, rejected = (
        tokenizer(row["prompt"] + row[key], add_special_tokens=False)["input_ids"]
        for key in ("chosen", "rejected")
    )
    if chosen == rejected:
        raise IlaError(
            f"{pair.source}: 'chosen' and 'rejected' give the same {len(chosen)} tokens, so the "
            "pair carries no preference; make the replies differ or drop the pair"
        )
    return max_length is None or chosen[:max_length] != rejected[:max_length]


def _prompt(value: Any, where: str) -> tuple[dict[str, str], ...]:
    if isinstance(value, str):
        if not value.strip():
            raise IlaError(f"{where}: 'prompt' is empty")
        return ({"role": "user", "content": value},)
    messages = _messages(value, "prompt", where)
    if not messages or messages[-1]["role"] != "user":
        raise IlaError(f"{where}: 'prompt' must end with a user message")
    return tuple(messages)


def _reply(value: Any, key: str, where: str) -> str:
    if isinstance(value, str):
        return value
    messages = _messages(value, key, where)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise IlaError(f"{where}: '{key}' must be a string or a list of one assistant message")
    return messages[0]["content"]


def _implicit(
    chosen: Any, rejected: Any, where: str
) -> tuple[tuple[dict[str, str], ...], str, str]:
    if not isinstance(chosen, list) or not isinstance(rejected, list):
        raise IlaError(
            f"{where}: without 'prompt', 'chosen' and 'rejected' must each be a whole "
            "conversation (a list of messages); add a 'prompt' field for plain replies"
        )
    first = _messages(chosen, "chosen", where)
    second = _messages(rejected, "rejected", where)
    for messages, key in ((first, "chosen"), (second, "rejected")):
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise IlaError(
                f"{where}: without 'prompt', '{key}' must be a whole conversation ending with "
                "the assistant's reply"
            )
    if first[:-1] != second[:-1]:
        raise IlaError(
            f"{where}: 'chosen' and 'rejected' must share every turn but the last; add a "
            "'prompt' field if they answer different conversations"
        )
    return tuple(first[:-1]), first[-1]["content"], second[-1]["content"]


def _messages(value: Any, key: str, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise IlaError(f"{where}: '{key}' must be a string or a list of messages")
    messages = []
    for i, item in enumerate(value):
        if (
            not isinstance(item, Mapping)
            or item.get("role") not in ("system", "user", "assistant")
            or not isinstance(item.get("content"), str)
        ):
            raise IlaError(
                f"{where}: {key}[{i}] must be {{'role': system|user|assistant, 'content': str}}"
            )
        messages.append({"role": item["role"], "content": item["content"]})
    return messages


def _iter_preset(name: str) -> Iterator[tuple[str, Any]]:
    resource = resources.files("ila").joinpath("resources", _PRESET_FILES[name])
    with resource.open("r", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield f"preset:{name}:{number}", json.loads(line)
