"""Execution features every method gets from the core: patch-based execution,
mixed precision, automatic batch sizes, and the multi-device job scheduler."""
