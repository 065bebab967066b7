"""nightlab: an overnight research harness for training code.

An agent proposes an edit to the training script, the harness trains under a fixed budget,
measures the metric with an evaluation the agent cannot touch, keeps the change only when it is
really better, and records everything in a ledger that survives any crash.
"""

__version__ = "0.1.0"
