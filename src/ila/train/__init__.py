"""Training on the Hugging Face Trainer: arguments, the loss hooks and callbacks
(``trainer``), exact resume (``checkpoints``), multi-process launches (``parallel``),
whole tensors out of FSDP-sharded parameters (``sharding``) and the training precision
chosen for the machine (``precision``)."""
