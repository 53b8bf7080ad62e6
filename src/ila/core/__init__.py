"""The method's own objects, with no Trainer in them: units and where they live in a model
(``layers``), the stage-1 LoRA (``lora``), the stage-2 gates (``gates``), the stage-1
stopping rule (``stability``), rankings (``scores``) and how two of them agree
(``agreement``), stage-3 rules (``selection``), matched random selections (``controls``)
and the consensus of several runs (``ensemble``). docs/method.md describes each."""
