"""Conversations to training features with labels on the assistant's tokens only.

Alignment fine-tuning (ILA, Section 3 of the paper: LoRA on instruction/chat data) trains
the model to produce the responses, not to model the prompts, so the loss is taken on
assistant tokens only; everything else is labelled ``-100`` (ignored by the loss).

How the labelled tokens are found, exactly: the conversation is rendered to text once,
together with the character span of every assistant turn; the text is tokenized once
with character offsets, and a token is labelled when its characters overlap a span.
With a chat template, the span of assistant turn ``i`` starts where the rendering of the
conversation before it *with the generation prompt* ends and stops where the rendering
up to and including it ends, less trailing whitespace, so it covers the content and the
token that closes the turn (``<|im_end|>`` in ChatML) but not the newline after it. A
template that does not render conversations prefix-consistently is refused.

Without a chat template (or with ``template="plain"``) the documented plain template is::

    ### System:\\n{system}\\n\\n### User:\\n{user}\\n\\n### Assistant:\\n{assistant}{eos}

one block ``### Role:\\n{content}`` per message (the system block only when there is a
system message), blocks joined by a blank line, ``{eos}`` (the tokenizer's EOS token)
right after each assistant content; the labelled span is ``{assistant}{eos}``. The
generation prompt adds ``\\n\\n### Assistant:\\n`` (no separator for an empty
conversation). Plain-text examples (``role == "text"``) are ``{text}{eos}``, all labelled.

A BOS token is prepended only when the tokenizer adds one by default and the rendered
text does not already start with it, so it never appears twice.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ila.config import setting
from ila.data.formats import Example
from ila.errors import IlaError, short_repr

if TYPE_CHECKING:
    import torch

__all__ = [
    "IGNORE_INDEX",
    "PLAIN_HEADERS",
    "PLAIN_SEPARATOR",
    "TEMPLATES",
    "PaddingCollator",
    "TokenizedData",
    "format_prompt",
    "prompt_token_ids",
    "render_conversation",
    "resolve_template",
    "tokenize_examples",
]

logger = logging.getLogger(__name__)
_WHITESPACE = re.compile(r"\s")

IGNORE_INDEX = -100
TEMPLATES = ("auto", "chat", "plain")
PLAIN_HEADERS = {
    "system": "### System:\n",
    "user": "### User:\n",
    "assistant": "### Assistant:\n",
}
PLAIN_SEPARATOR = "\n\n"


@dataclass
class TokenizedData:
    """Training features and what tokenization did to the examples.

    ``features`` hold ``input_ids``, ``attention_mask`` and ``labels`` lists;
    ``num_dropped`` examples had no response token left after truncation;
    ``num_truncated`` kept examples were cut to ``max_length``; ``num_empty_responses``
    kept examples have assistant turns with no text (only the end-of-turn token is
    learned); ``num_response_tokens`` counts the labelled tokens over all features.
    ``warnings`` says what of this a user should know (also logged); ``kept`` is the
    index of each feature's example in the examples tokenized.
    """

    features: list[dict[str, list[int]]] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    num_dropped: int = 0
    num_truncated: int = 0
    num_empty_responses: int = 0
    num_response_tokens: int = 0
    warnings: list[str] = field(default_factory=list)


def resolve_template(tokenizer: Any, template: str = "auto") -> str:
    """``"chat"`` or ``"plain"``: ``auto`` uses the tokenizer's chat template when it has one."""
    if template not in TEMPLATES:
        raise IlaError(f"unknown template {template!r}; pass one of {', '.join(TEMPLATES)}")
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has_chat:
        raise IlaError(
            "the tokenizer has no chat template; pass ",
            setting("data", "template"),
            " plain (or auto)",
        )
    return "chat" if template == "chat" or (template == "auto" and has_chat) else "plain"


def render_conversation(
    messages: Sequence[Mapping[str, str]], tokenizer: Any, template: str = "auto"
) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as text and the character spans ``[start, end)`` to train on."""
    if len(messages) == 1 and messages[0]["role"] == "text":
        text = messages[0]["content"] + (tokenizer.eos_token or "")
        return text, [(0, len(text))]
    _check_roles(messages)
    if resolve_template(tokenizer, template) == "plain":
        return _render_plain(messages, tokenizer.eos_token or "")
    full = _apply_chat_template(tokenizer, messages, generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _apply_chat_template(tokenizer, messages[:i], generation_prompt=True)
        upto = _apply_chat_template(tokenizer, messages[: i + 1], generation_prompt=False)
        if not (full.startswith(upto) and upto.startswith(before)):
            raise IlaError(
                "the tokenizer's chat template does not render conversations prefix by "
                "prefix, so assistant tokens cannot be located; pass ",
                setting("data", "template"),
                " plain",
            )
        spans.append((len(before), len(upto.rstrip())))
    return full, spans


def tokenize_examples(
    examples: Sequence[Example], tokenizer: Any, *, max_length: int, template: str = "auto"
) -> TokenizedData:
    """Tokenize ``examples`` with labels on assistant tokens only (see the module docs).

    Sequences longer than ``max_length`` are cut from the right; an example left without
    a labelled token is dropped and counted, and if every example is dropped the error
    says to raise ``--max-length``. Data whose every response is empty is refused (it
    would teach only the end-of-turn token); a warning says when some responses are empty
    and when every kept example was cut.
    """
    _check_inputs(examples, tokenizer, max_length)
    resolve_template(tokenizer, template)  # validate once, before the loop
    bos = _bos_ids(tokenizer)
    text_limit = _text_limit(tokenizer, max_length)
    result = TokenizedData()
    for index, example in enumerate(examples):
        try:
            text, spans = render_conversation(example.messages, tokenizer, template)
        except IlaError as exc:
            raise IlaError(f"{example.source}: ", *exc.parts) from exc
        cut = _cut_text(text, text_limit)
        input_ids, labels = _encode(cut, spans, tokenizer, bos)
        truncated = len(cut) < len(text)
        if len(input_ids) > max_length:
            input_ids, labels = input_ids[:max_length], labels[:max_length]
            truncated = True
        num_labelled = sum(label != IGNORE_INDEX for label in labels)
        if num_labelled == 0:
            result.num_dropped += 1
            continue
        result.num_truncated += truncated
        result.num_empty_responses += _empty_response(example.messages)
        result.num_response_tokens += num_labelled
        result.features.append(
            {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}
        )
        result.kept.append(index)
    _check_kept(result, len(examples), max_length)
    return result


def _check_inputs(examples: Sequence[Example], tokenizer: Any, max_length: Any) -> None:
    """Raise :class:`IlaError` unless ``max_length`` is an integer >= 2, there are examples
    and ``tokenizer`` is fast (response-only labels need its character offsets)."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise IlaError(
            setting("data", "max_length"), f" must be an integer >= 2, got {short_repr(max_length)}"
        )
    if not examples:
        raise IlaError("no examples to tokenize; check the data source")
    if not getattr(tokenizer, "is_fast", False):
        raise IlaError(
            "response-only labels need a fast (Rust) tokenizer with character offsets; "
            "use a model whose tokenizer has a tokenizer.json"
        )


def _check_kept(result: TokenizedData, num_examples: int, max_length: int) -> None:
    """Refuse a result with no example kept or only empty responses; add (and log) the
    warnings about dropped examples, empty responses and examples that were all cut."""
    if not result.features:
        raise IlaError(
            f"all {num_examples} examples were dropped: no response token fits in "
            f"{max_length} tokens; raise ",
            setting("data", "max_length"),
        )
    kept = len(result.features)
    if result.num_empty_responses == kept:
        raise IlaError(
            f"every one of the {kept} examples has an empty assistant response, so only the "
            "end-of-turn token would be learned; check the data's response field"
        )
    if result.num_dropped:
        result.warnings.append(
            f"dropped {result.num_dropped} of {num_examples} examples with no response "
            f"token within {max_length} tokens"
        )
    if result.num_empty_responses:
        result.warnings.append(
            f"{result.num_empty_responses} of {kept} examples have an empty assistant "
            "response (only its end-of-turn token is learned)"
        )
    if result.num_truncated == kept:
        result.warnings.append(
            f"every one of the {kept} examples was cut at --max-length {max_length}: the ends "
            "of all responses are lost; raise --max-length if they matter"
        )
    for warning in result.warnings:
        logger.warning("%s", warning)


def _empty_response(messages: Sequence[Mapping[str, str]]) -> bool:
    """True if the example has assistant turns and all of them are blank."""
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    return bool(replies) and all(not reply.strip() for reply in replies)


def format_prompt(
    messages: Sequence[Mapping[str, str]], tokenizer: Any, template: str = "auto"
) -> str:
    """The generation prompt: the conversation before its final assistant turn (all of it
    when it has none) followed by the assistant header, in the training template."""
    if any(m["role"] == "text" for m in messages):
        raise IlaError("a plain-text example has no prompt to generate from")
    _check_roles(messages)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    context = list(messages[:last] if last is not None else messages)
    if resolve_template(tokenizer, template) == "chat":
        return _apply_chat_template(tokenizer, context, generation_prompt=True)
    text, _ = _render_plain(context, tokenizer.eos_token or "")
    return text + (PLAIN_SEPARATOR if text else "") + PLAIN_HEADERS["assistant"]


def prompt_token_ids(
    messages: Sequence[Mapping[str, str]], tokenizer: Any, template: str = "auto"
) -> list[int]:
    """Token ids of :func:`format_prompt`, with the same BOS rule as training features."""
    text = format_prompt(messages, tokenizer, template)
    bos = _bos_ids(tokenizer)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids if _starts_with_bos(text, tokenizer, bos) else bos + ids


class PaddingCollator:
    """Pad features on the right into ``torch.long`` tensors for a causal-LM batch.

    ``input_ids`` are padded with ``pad_token_id``, ``attention_mask`` with 0 and
    ``labels`` with -100; lengths are rounded up to ``pad_to_multiple_of`` when given.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int):
            shown = short_repr(pad_token_id)
            raise IlaError(f"pad_token_id must be an integer token id, got {shown}")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise IlaError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        import torch

        if not features:
            raise ValueError("PaddingCollator got an empty batch")
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            ids = list(f["input_ids"])
            mask = list(f.get("attention_mask", [1] * len(ids)))
            labels = list(f["labels"])
            pad = length - len(ids)
            batch["input_ids"].append(ids + [self.pad_token_id] * pad)
            batch["attention_mask"].append(mask + [0] * pad)
            batch["labels"].append(labels + [IGNORE_INDEX] * pad)
        return {key: torch.tensor(rows, dtype=torch.long) for key, rows in batch.items()}


def _render_plain(
    messages: Sequence[Mapping[str, str]], eos: str
) -> tuple[str, list[tuple[int, int]]]:
    text, spans = "", []
    for i, message in enumerate(messages):
        text += (PLAIN_SEPARATOR if i else "") + PLAIN_HEADERS[message["role"]]
        if message["role"] == "assistant":
            start = len(text)
            text += message["content"] + eos
            spans.append((start, len(text)))
        else:
            text += message["content"]
    return text, spans


def _apply_chat_template(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], *, generation_prompt: bool
) -> str:
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=generation_prompt
        )
    except TemplateError as exc:
        raise IlaError(f"the chat template cannot render this conversation ({exc})") from exc
    if not isinstance(text, str):
        raise IlaError(f"apply_chat_template returned {type(text).__name__}, not text")
    return text


def _text_limit(tokenizer: Any, max_length: int) -> int:
    """Characters of a text that surely hold its first ``max_length`` tokens.

    No token covers more characters than its longest vocabulary entry has, so
    ``max_length`` tokens never reach past ``(max_length + 1) * longest`` characters; the
    rest of a longer text is not tokenized (a 5 MB line would take about a gigabyte).
    """
    longest = max((len(token) for token in tokenizer.get_vocab()), default=1)
    return (max_length + 1) * max(longest, 1)


def _cut_text(text: str, limit: int) -> str:
    """``text`` cut after ``limit`` characters, at the next whitespace within 1,024
    characters, so that the word at the cut (which a BPE tokenizer encodes as one piece)
    is not split; texts within the limit are returned whole."""
    if len(text) <= limit:
        return text
    space = _WHITESPACE.search(text, limit, limit + 1024)
    return text[: space.start() if space else limit]


def _encode(
    text: str, spans: list[tuple[int, int]], tokenizer: Any, bos: list[int]
) -> tuple[list[int], list[int]]:
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    labels = []
    for token_id, (start, end) in zip(input_ids, encoding["offset_mapping"], strict=True):
        inside = any(start < span_end and end > span_start for span_start, span_end in spans)
        labels.append(token_id if inside else IGNORE_INDEX)
    if not _starts_with_bos(text, tokenizer, bos):
        input_ids, labels = bos + input_ids, [IGNORE_INDEX] * len(bos) + labels
    return input_ids, labels


def _bos_ids(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before any text by default (its BOS), possibly none."""
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    special = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    for start in range(len(special) - len(plain) + 1):
        if special[start : start + len(plain)] == plain:
            return special[:start]
    return []


def _starts_with_bos(text: str, tokenizer: Any, bos: list[int]) -> bool:
    bos_token = getattr(tokenizer, "bos_token", None)
    return not bos or bool(bos_token and text.startswith(bos_token))


def _check_roles(messages: Sequence[Mapping[str, str]]) -> None:
    for message in messages:
        if message["role"] not in PLAIN_HEADERS:
            raise IlaError(
                f"message role {message['role']!r} is not one of {', '.join(PLAIN_HEADERS)}"
            )
