"""ILA inside other tools' training loops.

:mod:`ila.integrations.callback` holds :class:`~ila.integrations.callback.IlaCallback`, a
transformers ``TrainerCallback`` that ranks the LoRA adapter a ``Trainer`` (or a TRL
trainer) is training; it is exported as ``ila.IlaCallback``. Importing this package is
cheap: the callback module, and transformers behind it, load on first use.
"""
