"""The research workspace on disk: git (branch, experiment refs, worktrees), `nightlab init`, and
the frozen-file hashes."""
