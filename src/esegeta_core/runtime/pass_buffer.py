"""One reused tensor for the inputs of a method's forward passes.

Perturbation methods build thousands of perturbed inputs; building each pass in a
fresh tensor (or all of them up front) makes memory follow the whole job instead of one
pass. Every engine (occlusion and ablation, Shapley values, the coalition methods, RISE,
LIME) writes its passes into a :class:`PassBuffer`: it grows to the largest pass asked
for and changes layout when the pass planner asks for channels-last.
"""

from __future__ import annotations

import torch

from esegeta_core.runtime.passes import memory_format


class PassBuffer:
    """The inputs of one pass, in one tensor every pass reuses.

    ``item`` is one input ``(C, *spatial)``: the buffer holds passes of its shape, dtype
    and device. :meth:`take` returns the first ``n`` slots, whose contents are what the
    last pass left there (engines whose slots remember what they hold ask to ``keep``
    them when the buffer grows or changes layout; the others get no copy).
    """

    def __init__(self, item: torch.Tensor) -> None:
        self.shape = tuple(item.shape)
        self.dtype = item.dtype
        self.device = item.device
        self.data: torch.Tensor | None = None
        self.allocations = 0
        """How many tensors the buffer has made (a test's count of its growth)."""

    def take(self, n: int, channels_last: bool, keep: bool = False) -> torch.Tensor:
        """The first ``n`` slots, laid out channels-last when asked (channels-last
        applies to 2D and 3D inputs). With ``keep`` the slots' contents survive growth
        and a change of layout; without it, the old tensor is freed before a new one is
        made."""
        layout = memory_format(channels_last, len(self.shape) + 1)
        data = self.data
        if data is not None and data.shape[0] >= n:
            if not data.is_contiguous(memory_format=layout):
                if keep:
                    data = data.contiguous(memory_format=layout)
                else:
                    data = self._fresh(data.shape[0], layout)
                self.data = data
            return data[:n]
        if not keep:
            data = None
        grown = self._fresh(n, layout)
        if data is not None:
            grown[: data.shape[0]] = data
        self.data = grown
        return grown

    def _fresh(self, n: int, layout: torch.memory_format) -> torch.Tensor:
        self.data = None  # freed before the new one is made (unless the caller holds it)
        self.allocations += 1
        return torch.empty(
            (n, *self.shape), dtype=self.dtype, device=self.device, memory_format=layout
        )
