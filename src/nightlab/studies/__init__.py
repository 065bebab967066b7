"""Side studies after a research session: validate at another scale, time to target, ablate the
kept changes, and the statistics that compare two arms."""
