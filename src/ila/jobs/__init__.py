"""The jobs that own a run directory: scoring and the whole ILA run (``pipeline``), the
selective fine-tune (``finetune``) and the evaluation (``evaluate``). Each checks its
inputs, prepares and locks its run directory (ila.rundir), records its settings, works,
and marks its stages complete."""
