"""Training on the Hugging Face Trainer: arguments, the loss hooks and callbacks
(``trainer``), exact resume (``checkpoints``), multi-process launches (``parallel``) and
the training precision chosen for the machine (``precision``)."""
