"""The experiment store: the SQLite ledger, what is exported from it (results.tsv, status JSON),
and rebuilding it from git when it is lost."""
