"""Executors run one training (and evaluation) command and say how it went."""
