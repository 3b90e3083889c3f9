"""Quadrature points on [0, 1] for path integrals (integrated gradients).

Riemann sums (left, right, middle, trapezoid) and Gauss-Legendre; Gauss-Legendre
nodes come from the Golub-Welsch eigenvalue problem, in float64, without numpy.
"""

from __future__ import annotations

from typing import Literal

import torch

Integration = Literal[
    "gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"
]


def gauss_legendre(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of the ``n``-point Gauss-Legendre rule on [-1, 1]."""
    if n == 1:
        return torch.zeros(1, dtype=torch.float64), torch.full((1,), 2.0, dtype=torch.float64)
    k = torch.arange(1, n, dtype=torch.float64)
    off = k / torch.sqrt(4 * k * k - 1)
    jacobi = torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vectors = torch.linalg.eigh(jacobi)
    return nodes, 2 * vectors[0] ** 2


def quadrature(n: int, rule: Integration) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alphas, weights)`` in float64: the integral over [0, 1] of f is approximated
    by ``sum(weights * f(alphas))``."""
    i = torch.arange(n, dtype=torch.float64)
    if rule == "gausslegendre":
        nodes, weights = gauss_legendre(n)
        return (nodes + 1) / 2, weights / 2
    if rule == "riemann_trapezoid":
        if n == 1:
            return torch.full((1,), 0.5, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
        weights = torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
        weights[0] = weights[-1] = 0.5 / (n - 1)
        return i / (n - 1), weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[rule]
    return (i + offset) / n, torch.full((n,), 1.0 / n, dtype=torch.float64)
