"""The offline search agent: knobs found in the code, a domain for each, and a Gaussian-process
model of the results so far that ranks the next move."""
