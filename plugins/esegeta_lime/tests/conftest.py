"""Shared fast parameters for the plugin's tests."""

from __future__ import annotations

from typing import Any

# tiny noisy inputs need compact SLIC segments (else SLIC merges them into one)
FAST: dict[str, Any] = {"num_samples": 16, "n_segments": 8, "compactness": 100.0}

FAST_PARAMS: dict[str, dict[str, Any]] = {"lime.lime": FAST}
