"""What a person reads in the morning: the progress plot, the terminal summary, the HTML report.

Each module reads the ledger and writes one artifact; nothing here changes the ledger. Modules
are imported on demand (``from nightlab.report.plot import plot_progress``) so that commands
which draw nothing never pay for importing matplotlib.
"""
