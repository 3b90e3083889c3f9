"""Execution features every method gets from the core: one call of a method on a model
(``job``: preparation, checks, the whole batch or patch by patch, out-of-memory retries,
state restored), patch-based execution, mixed precision, automatic batch sizes and the
pass planner, the ablation engine, and the multi-device job scheduler."""
