"""Experiment trackers: every experiment of a research tag as a run in MLflow or Weights & Biases.

``registry`` declares the :class:`~nightlab.store.trackers.registry.Tracker` interface and the
kinds (``mlflow``, ``wandb``, or any installed package's ``nightlab.trackers`` entry point),
``records`` turns ledger rows into what a tracker logs, ``sync`` sends them, after the fact
(``nightlab export``) or while ``nightlab run`` runs (``[trackers] live``).
"""
