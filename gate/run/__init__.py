"""One model's run, step by step: load, check, probe, search and build candidates,
validate, measure, decide."""
