"""What one `ila run` reads once and hands to each of its steps.

A job run on its own (`ila score`, `ila finetune`, `ila eval`) loads its data and model
itself. `ila run` chains four of them (score, fine-tune the selection, fine-tune all
units, evaluate), and without sharing it would read the base weights from disk six times
and tokenize the same splits eight times: minutes of loading, and the risk of two copies
in memory, at 7B. :class:`SharedInputs` keeps:

- the data, loaded and split once;
- the tokenized training and held-out splits (``tokenize_examples``), once per tokenizer,
  length and template;
- the base model and tokenizer, read from disk once and handed to the next step as long
  as every step leaves the base weights as it found them.

A step that cannot give the base back untouched says so (:meth:`SharedInputs.spoil_model`):
a full fine-tune (its weights are the tuned ones), a merge into the base, QLoRA's
preparation of a 4-bit base. The next step that asks reads the weights again. The base is
never shared under FSDP, whose sharding wraps the model in place.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ila.config import DataConfig, ModelConfig
from ila.data.formats import Example
from ila.data.tokenization import TokenizedData
from ila.train.parallel import fsdp_requested

__all__ = ["ModelLoad", "SharedInputs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelLoad:
    """The arguments that decide what ``ila.model.loading.load_model`` returns."""

    model: str
    dtype: str
    device: str
    threads: int | None
    quantize_4bit: bool

    @classmethod
    def of(cls, model: ModelConfig, *, quantize_4bit: bool | None = None) -> ModelLoad:
        """The load of ``model``'s settings (4-bit as its quantization says unless given)."""
        four_bit = model.quantization == "nf4" if quantize_4bit is None else quantize_4bit
        return cls(model.model, model.dtype, model.device, model.threads, four_bit)


class SharedInputs:
    """The data split, its tokenizations and the base model of one `ila run`.

    ``data`` and ``objective`` fix the split: every step of a run reads the same one.
    The counters (``model_loads``, ``tokenizations``) are what the run's log and its test
    report.
    """

    def __init__(self, data: DataConfig, objective: str) -> None:
        self.data = data
        self.objective = objective
        self.model_loads = 0
        self.tokenizations = 0
        self._split: tuple[list[Any], list[Any], list[Any]] | None = None
        # keyed by the tokenizer's id; the tokenizer is kept beside its data, so that the
        # id cannot be reused by another object while the entry lives
        self._tokenized: dict[tuple[str, int, int, str], tuple[Any, TokenizedData]] = {}
        self._model: tuple[ModelLoad, Any, Any] | None = None

    def split(self) -> tuple[list[Any], list[Any], list[Any]]:
        """``(examples, train, held_out)`` as ``ila.data.load_split`` makes them, once."""
        if self._split is None:
            from ila.data import load_split

            self._split = load_split(self.data, objective=self.objective)
        return self._split

    def tokenized(self, which: str, tokenizer: Any) -> TokenizedData:
        """The ``train`` or ``held_out`` split tokenized with ``tokenizer`` at the data's
        max length and template (``ila.data.tokenize_examples``), once per tokenizer."""
        from ila.data import tokenize_examples

        _, train, held_out = self.split()
        examples = {"train": train, "held_out": held_out}[which]
        key = (which, id(tokenizer), self.data.max_length, self.data.template)
        if key not in self._tokenized:
            self.tokenizations += 1
            self._tokenized[key] = (
                tokenizer,
                tokenize_examples(
                    examples,
                    tokenizer,
                    max_length=self.data.max_length,
                    template=self.data.template,
                ),
            )
        return self._tokenized[key][1]

    def held_out_features(self, chosen: Sequence[Example], tokenizer: Any) -> list[dict] | None:
        """The tokenized features of ``chosen`` when it is the start of the held-out split
        (what an evaluation reads), taken from the split's one tokenization; else None."""
        _, _, held_out = self.split()
        if len(chosen) > len(held_out) or any(
            a is not b for a, b in zip(chosen, held_out, strict=False)
        ):
            return None
        tokenized = self.tokenized("held_out", tokenizer)
        kept = zip(tokenized.features, tokenized.kept, strict=True)
        return [feature for feature, index in kept if index < len(chosen)]

    def model(self, load: ModelLoad, *, max_length: int | None = None) -> tuple[Any, Any]:
        """The base model and tokenizer of ``load``: the one in memory when it was loaded
        the same way and no step has spoiled it, else read from disk (and kept)."""
        if self._model is not None and self._model[0] == load:
            return self._model[1], self._model[2]
        from ila.model.loading import load_model

        self._model = None  # the old one is released before the new one is read
        model, tokenizer = load_model(
            load.model,
            dtype=load.dtype,
            device=load.device,
            threads=load.threads,
            quantize_4bit=load.quantize_4bit,
            max_length=max_length,
        )
        self.model_loads += 1
        if not fsdp_requested():
            self._model = (load, model, tokenizer)
        return model, tokenizer

    def spoil_model(self, why: str) -> None:
        """A step changed the base weights (``why``): the next step reads them again."""
        if self._model is not None:
            log.info("the next step reads the base weights again: %s", why)
        self._model = None
