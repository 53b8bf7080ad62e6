"""Analyses of finished runs that load no model weights: overlap of rankings between runs
(``compare``), memory and time plans (``plan``) and selections exported for other
trainers (``exports``)."""
