"""A finished `ila score` run's stage-1 adapter, loaded to learn stage-2 gates on it again.

The stage-2 benchmarks compare stage-2 settings on the same stage-1 Delta (docs/method.md,
"Stage 2"): each loads the run's model, data split and adapter once through
:func:`load_stage1_run` and calls :func:`learn_gates` per setting and seed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass
class Stage1Run:
    """The stage-1 adapter of one ILA run on its model, with the run's training split."""

    run_dir: Path
    config: Any
    model: Any
    tokenizer: Any
    layer_map: Any
    train_examples: list
    note: str

    def features(self, max_length: int | None = None) -> list[dict[str, list[int]]]:
        """The training split tokenized at ``max_length`` (default: the run's own)."""
        from ila.data import tokenize_examples

        length = max_length or self.config.data.max_length
        return tokenize_examples(self.train_examples, self.tokenizer, max_length=length).features


def load_stage1_run(run_dir: Path) -> Stage1Run:
    """Load ``run_dir``'s model with its stage-1 adapter (peft) and its training split."""
    from peft import PeftModel

    from ila.config import ScoreConfig, config_from_dict
    from ila.core.layers import find_layers
    from ila.data import load_examples, split_examples
    from ila.model.loading import load_model

    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    resolved.pop("method", None)
    config = config_from_dict(ScoreConfig, resolved)
    model, tokenizer = load_model(config.model.model, device="cpu", threads=config.model.threads)
    layer_map = find_layers(model)
    examples = load_examples(config.data.data, limit=config.data.limit)
    train, _ = split_examples(
        examples, eval_fraction=config.data.eval_fraction, seed=config.data.split_seed
    )
    peft_model = PeftModel.from_pretrained(model, str(run_dir / "stage1" / "adapter"))
    stage1 = json.loads((run_dir / "stage1" / "summary.json").read_text())
    argv = json.loads((run_dir / "environment.json").read_text())["argv"]
    command = " ".join([Path(argv[0]).name, *argv[1:]])
    note = (
        f"`{run_dir}` (made by `{command}`; stage-1 seed {config.train.seed}, "
        f"{stage1['steps']} steps, stable: {stage1['stable']})"
    )
    return Stage1Run(run_dir, config, peft_model, tokenizer, layer_map, list(train), note)


def learn_gates(
    run: Stage1Run,
    out: Path,
    *,
    seed: int,
    features: list[dict[str, list[int]]] | None = None,
    **stage2: Any,
) -> dict[str, Any]:
    """Stage 2 on ``run``'s adapter with the run's settings, ``stage2`` overrides and
    training seed ``seed``; returns the stage-2 summary (``gates``, ``seconds``, ...)."""
    from ila.data import data_fingerprint
    from ila.scorers.existing import learn_stage2

    base = run.config
    config = dataclasses.replace(
        base,
        stage2=dataclasses.replace(base.stage2, **stage2),
        train=dataclasses.replace(base.train, seed=seed),
    )
    return learn_stage2(
        run.model,
        tokenizer=run.tokenizer,
        layer_map=run.layer_map,
        train_features=features if features is not None else run.features(),
        config=config,
        output_dir=out,
        data_fingerprint=data_fingerprint(run.train_examples),
        model_id=config.model.model,
        seed=seed,
    )
