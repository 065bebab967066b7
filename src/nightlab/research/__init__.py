"""One research session: the loop (the order of things), screening proposals, running replicates,
the keep/discard policy, and the session that builds all of it from nightlab.toml."""
