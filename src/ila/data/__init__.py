"""Alignment data: read it, split it, and turn it into training features.

ILA (arXiv 2410.17875, Section 3) fine-tunes LoRA on instruction/chat data and learns
which layers matter for that alignment. This module is the one entry point for the data
side; the work is spread over modules named for their concept:

- :mod:`ila.data.formats`: the record formats (alpaca, sharegpt, messages,
  prompt-completion, text) and :class:`Example`;
- :mod:`ila.data.sources`: local files, the shipped presets, the datasets hub;
- :mod:`ila.data.loading`: examples and the train/held-out split of a data argument;
- :mod:`ila.data.split`: the deterministic split and the data fingerprint;
- :mod:`ila.data.tokenization`: templates, assistant-only labels, padding.

Importing it is cheap: torch and datasets are imported only when needed.
"""

from __future__ import annotations

from ila.data.formats import FORMATS, Example
from ila.data.loading import load_examples, load_split
from ila.data.sources import PRESET_ALIASES, PRESETS
from ila.data.split import data_fingerprint, split_examples
from ila.data.tokenization import (
    TEMPLATES,
    PaddingCollator,
    TokenizedData,
    format_prompt,
    prompt_token_ids,
    tokenize_examples,
)

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
