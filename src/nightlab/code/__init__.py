"""Reading and rewriting the editable files: edits (SEARCH/REPLACE, whole files), knobs, the diff
audit, and the classification of a change (code, cosmetic, seed-only)."""
