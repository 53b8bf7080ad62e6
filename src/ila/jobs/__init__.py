"""The jobs that own a run directory: scoring (``score``), the whole ILA run (``run``), the
selective fine-tune (``finetune``) and the evaluation (``evaluate``); ``inputs`` holds what
one `ila run` loads once for all of them. Each checks its
inputs, prepares and locks its run directory (ila.rundir), records its settings, works,
and marks its stages complete."""
