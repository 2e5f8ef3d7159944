"""Experiments over training runs (no torch): hyperparameter sweeps on Optuna (:mod:`.spec`, :mod:`.sweep`,
:mod:`.status`) and a config proposed from the dataset (:mod:`.autotune`).

Every trial of a sweep is an ordinary run directory written by an ordinary ``flux2-lora train``
subprocess, so everything that reads runs (``runs``, the web UI's monitor, ``--resume``) works on it.
"""
