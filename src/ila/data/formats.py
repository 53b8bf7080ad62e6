"""Record formats of alignment data and their conversion to :class:`Example`.

Every supported format is turned into one shape, a conversation of role/content messages,
so tokenization (``ila.data.tokenization``) has a single code path. The formats, by the key
that identifies them (auto-detection looks at the first record's keys, in this order):

- ``messages``: ``messages: [{role, content}]`` with roles system, user, assistant;
- ``sharegpt``: ``conversations: [{from, value}]``; human/user -> user, gpt/assistant ->
  assistant, system -> system;
- ``alpaca``: ``instruction``, optional ``input``, ``output``, optional ``system``; the
  user turn is the instruction, plus a blank line and the input when there is one;
- ``prompt-completion``: ``prompt`` (user) and ``completion`` (assistant), each a string
  or, as in TRL's conversational form, a list of messages;
- ``text``: ``text``, one ``{"role": "text"}`` message trained on every token.

An optional ``answer`` field (a checkable final answer for exact-match evaluation) is
carried through in every format. Other keys are ignored. A record that does not fit its
format is an :class:`~ila.errors.IlaError` naming its location (``file:line``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ila.config import setting
from ila.errors import IlaError

__all__ = [
    "FORMATS",
    "ROLES",
    "Example",
    "detect_format",
    "record_to_example",
]

FORMATS = ("auto", "alpaca", "sharegpt", "messages", "prompt-completion", "text")
ROLES = ("system", "user", "assistant")

# Key that identifies each format, checked in this order on the first record.
_DETECT_KEYS = (
    ("messages", "messages"),
    ("conversations", "sharegpt"),
    ("instruction", "alpaca"),
    ("prompt", "prompt-completion"),
    ("text", "text"),
)
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


@dataclass(frozen=True)
class Example:
    """One training conversation.

    ``messages`` holds ``{"role": "system"|"user"|"assistant", "content": str}`` dicts (a
    plain-text example holds one ``{"role": "text", ...}`` message). ``answer`` is the
    checkable final answer when the data has one; ``source`` says where the example came
    from (``"path/file.jsonl:12"``, ``"preset:ila-instruct:12"``) for error messages.
    """

    messages: tuple[dict[str, str], ...]
    answer: str | None = None
    source: str = ""

    @property
    def is_text(self) -> bool:
        """True for a plain-text example (language modelling on every token)."""
        return len(self.messages) == 1 and self.messages[0]["role"] == "text"


def detect_format(record: Any, where: str) -> str:
    """Return the format whose identifying key the (first) record holds."""
    if not isinstance(record, Mapping):
        raise IlaError(f"{where}: record is a {_type_name(record)}, not an object with fields")
    if "chosen" in record and "rejected" in record:
        raise IlaError(
            f"{where}: the record is a preference pair (chosen/rejected); pass ",
            setting("train", "objective"),
            " dpo to train on preferences",
        )
    for key, name in _DETECT_KEYS:
        if key in record:
            return name
    keys = ", ".join(repr(k) for k in list(record)[:8]) or "none"
    raise IlaError(
        f"{where}: cannot detect the data format from the record's keys ({keys}); "
        f"rename the fields or pass ",
        setting("data", "data_format"),
        f" (one of {', '.join(FORMATS[1:])})",
    )


def record_to_example(record: Any, fmt: str, where: str) -> Example:
    """Convert one record of format ``fmt`` into an :class:`Example` (``where`` = location)."""
    if not isinstance(record, Mapping):
        raise IlaError(f"{where}: record is a {_type_name(record)}, not an object with fields")
    convert = _CONVERTERS.get(fmt)
    if convert is None:
        raise IlaError(
            "unknown ",
            setting("data", "data_format"),
            f" {fmt!r}; pass one of {', '.join(FORMATS)}",
        )
    messages = convert(record, where)
    if fmt != "text" and not any(m["role"] == "assistant" for m in messages):
        raise IlaError(f"{where}: conversation has no assistant turn to train on (format {fmt})")
    return Example(messages=tuple(messages), answer=_answer(record, where), source=where)


def _alpaca(record: Mapping[str, Any], where: str) -> list[dict[str, str]]:
    instruction = _field(record, "instruction", where, "alpaca")
    output = _field(record, "output", where, "alpaca")
    extra = _optional_field(record, "input", where, "alpaca")
    system = _optional_field(record, "system", where, "alpaca")
    user = f"{instruction}\n\n{extra}" if extra else instruction
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _sharegpt(record: Mapping[str, Any], where: str) -> list[dict[str, str]]:
    turns = _list_field(record, "conversations", where, "sharegpt")
    messages = []
    for i, turn in enumerate(turns, 1):
        at = f"{where}: conversations[{i}]"
        if not isinstance(turn, Mapping) or "from" not in turn or "value" not in turn:
            raise IlaError(f"{at} is not an object with 'from' and 'value' (format sharegpt)")
        role = _SHAREGPT_ROLES.get(turn["from"]) if isinstance(turn["from"], str) else None
        if role is None:
            raise IlaError(
                f"{at} has unknown speaker {turn['from']!r}; "
                f"expected one of {', '.join(_SHAREGPT_ROLES)} (format sharegpt)"
            )
        if not isinstance(turn["value"], str):
            raise IlaError(f"{at}: 'value' is a {_type_name(turn['value'])}, not a string")
        messages.append({"role": role, "content": turn["value"]})
    return messages


def _messages(record: Mapping[str, Any], where: str) -> list[dict[str, str]]:
    return _message_list(_list_field(record, "messages", where, "messages"), "messages", where)


def _prompt_completion(record: Mapping[str, Any], where: str) -> list[dict[str, str]]:
    parts = []
    for key, role in (("prompt", "user"), ("completion", "assistant")):
        if key not in record or record[key] is None:
            raise IlaError(f"{where}: record has no {key!r} field (format prompt-completion)")
        value = record[key]
        if isinstance(value, str):
            parts.append([{"role": role, "content": value}])
        elif isinstance(value, list):
            parts.append(_message_list(value, key, where))
        else:
            raise IlaError(
                f"{where}: {key!r} is a {_type_name(value)}, not a string or a list of messages"
            )
    return [*parts[0], *parts[1]]


def _text(record: Mapping[str, Any], where: str) -> list[dict[str, str]]:
    return [{"role": "text", "content": _field(record, "text", where, "text")}]


_CONVERTERS = {
    "alpaca": _alpaca,
    "sharegpt": _sharegpt,
    "messages": _messages,
    "prompt-completion": _prompt_completion,
    "text": _text,
}


def _message_list(items: list[Any], key: str, where: str) -> list[dict[str, str]]:
    messages = []
    for i, item in enumerate(items, 1):
        at = f"{where}: {key}[{i}]"
        if not isinstance(item, Mapping) or "role" not in item or "content" not in item:
            raise IlaError(f"{at} is not an object with 'role' and 'content'")
        if item["role"] not in ROLES:
            raise IlaError(
                f"{at} has unknown role {item['role']!r}; expected one of {', '.join(ROLES)}"
            )
        if not isinstance(item["content"], str):
            raise IlaError(f"{at}: 'content' is a {_type_name(item['content'])}, not a string")
        messages.append({"role": item["role"], "content": item["content"]})
    return messages


def _field(record: Mapping[str, Any], key: str, where: str, fmt: str) -> str:
    if key not in record or record[key] is None:
        raise IlaError(f"{where}: record has no {key!r} field (format {fmt})")
    value = record[key]
    if not isinstance(value, str):
        raise IlaError(f"{where}: {key!r} is a {_type_name(value)}, not a string (format {fmt})")
    return value


def _optional_field(record: Mapping[str, Any], key: str, where: str, fmt: str) -> str:
    if record.get(key) is None:
        return ""
    return _field(record, key, where, fmt)


def _list_field(record: Mapping[str, Any], key: str, where: str, fmt: str) -> list[Any]:
    if key not in record or record[key] is None:
        raise IlaError(f"{where}: record has no {key!r} field (format {fmt})")
    value = record[key]
    # Parquet and the datasets library give nested lists back as lists; tuples come from
    # callers building records in Python.
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise IlaError(f"{where}: {key!r} is a {_type_name(value)}, not a list (format {fmt})")
    if not value:
        raise IlaError(f"{where}: {key!r} is empty (format {fmt})")
    return list(value)


def _answer(record: Mapping[str, Any], where: str) -> str | None:
    value = record.get("answer")
    # An empty cell (CSV) or a null (Parquet) means "no answer", not the empty answer.
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise IlaError(f"{where}: 'answer' is a {_type_name(value)}, not a string or a number")
    return str(value)


def _type_name(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    return type(value).__name__
