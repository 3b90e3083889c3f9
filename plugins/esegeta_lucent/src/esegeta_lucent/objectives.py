"""Feature-visualization objectives: a small string grammar and its evaluation.

An objective is a weighted sum of terms, each naming what to maximise::

    logit                     the target class's score (class visualization)
    logit:2                   class 2's score
    features.conv2            the whole layer: mean of squared activations (DeepDream)
    features.conv2:3          channel 3: its mean activation (Lucent's "layer:channel")
    features.conv2:3@4,5      neuron: channel 3 at position (4, 5) ((z, y, x) in 3D)
    features.conv2:3@center   neuron: channel 3 at the centre of the map
    features.conv2:3 + 0.5*features.conv2:5 - features.conv1   sums, weights, signs

Terms evaluate to one value per batch item on activations captured with forward hooks,
so the same definitions serve 2D (through Lucent) and 3D (esegeta's own loop).
``logit`` is reserved: it always means the model's class scores, never a sub-module.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from esegeta_core import InvalidParamsError, resolve_layer
from esegeta_core.toolkit import gather_target, recording

LOGIT = "logit"

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_TERM = re.compile(
    r"\s*(?P<sign>[+-])?\s*"
    rf"(?:(?P<weight>{_NUMBER})\s*\*\s*)?"
    r"(?P<layer>[A-Za-z0-9_][\w.]*?)"
    r"(?:\s*:\s*(?P<channel>\d+))?"
    r"(?:\s*@\s*(?P<pos>center|\d+(?:\s*,\s*\d+)*))?"
    r"\s*(?=[+-]|$)"
)

GRAMMAR = (
    "an objective is 'logit', 'logit:CLASS', 'LAYER' (whole layer, DeepDream), "
    "'LAYER:CHANNEL', 'LAYER:CHANNEL@Y,X' (or '@Z,Y,X' in 3D, or '@center') for a neuron, "
    "or a sum of those with optional weights, e.g. "
    "'features.conv2:3 + 0.5*features.conv2:5 - features.conv1'"
)


@dataclass(frozen=True)
class Term:
    """One weighted term: ``weight * value(layer, channel, position)``."""

    layer: str
    weight: float = 1.0
    channel: int | None = None
    position: tuple[int, ...] | str | None = None
    """Neuron position (one index per spatial dimension), ``"center"`` or None."""

    @property
    def kind(self) -> str:
        if self.layer == LOGIT:
            return "logit"
        if self.channel is None:
            return "layer"
        return "channel" if self.position is None else "neuron"

    def __str__(self) -> str:
        text = self.layer
        if self.channel is not None:
            text += f":{self.channel}"
        if self.position is not None:
            pos = self.position
            text += "@" + (pos if isinstance(pos, str) else ",".join(map(str, pos)))
        return text if self.weight == 1.0 else f"{self.weight:g}*{text}"


def parse_objective(text: str) -> tuple[Term, ...]:
    """Parse an objective string into terms; ``ValueError`` (with the grammar) if bad."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"empty objective: {GRAMMAR}")
    terms: list[Term] = []
    pos = 0
    while pos < len(text):
        match = _TERM.match(text, pos)
        if match is None or match.end() == pos or (terms and not match["sign"]):
            raise ValueError(f"cannot parse objective {text!r} at {text[pos:]!r}: {GRAMMAR}")
        weight = float(match["weight"]) if match["weight"] else 1.0
        if match["sign"] == "-":
            weight = -weight
        layer = match["layer"]
        channel = int(match["channel"]) if match["channel"] is not None else None
        position: tuple[int, ...] | str | None = None
        if match["pos"] is not None:
            if channel is None:
                raise ValueError(
                    f"objective term {match.group().strip()!r}: a neuron needs a channel, "
                    f"'LAYER:CHANNEL@...': {GRAMMAR}"
                )
            raw = match["pos"]
            position = raw if raw == "center" else tuple(int(v) for v in raw.split(","))
        if layer == LOGIT and position is not None:
            raise ValueError(f"'logit' takes a class ('logit:3'), not a position: {GRAMMAR}")
        terms.append(Term(layer, weight, channel, position))
        pos = match.end()
    return tuple(terms)


def layers_of(terms: tuple[Term, ...]) -> list[str]:
    """The distinct layer paths the terms read (``logit`` excluded), in order."""
    return list(dict.fromkeys(t.layer for t in terms if t.layer != LOGIT))


def resolve_layers(model: nn.Module, terms: tuple[Term, ...], method: str) -> dict[str, nn.Module]:
    """Layer path -> module, with esegeta's near-name errors for typos."""
    return {path: resolve_layer(model, path, method=method) for path in layers_of(terms)}


@contextlib.contextmanager
def captured(modules: Mapping[str, nn.Module]) -> Iterator[Callable[[], dict[str, object]]]:
    """Record the outputs of ``modules`` (by path) while the block runs; yields ``take``,
    which returns each module's latest output since the previous ``take`` and drops the
    rest, so a long optimisation holds one pass's activations. The hooks are removed on
    exit, also after an error."""
    paths = list(modules)
    with recording(list(modules.values())) as records:

        def take() -> dict[str, object]:
            latest = {path: record[-1] for path, record in zip(paths, records) if record}
            for record in records:
                record.clear()
            return latest

        yield take


class Objective:
    """Evaluates parsed terms to one value per batch item (higher is better)."""

    def __init__(self, terms: tuple[Term, ...], target: torch.Tensor, method: str) -> None:
        self.terms = terms
        self.target = target
        self.method = method

    def __str__(self) -> str:
        text = ""
        for term in self.terms:
            sign = "-" if term.weight < 0 else "+"
            plain = str(Term(term.layer, abs(term.weight), term.channel, term.position))
            text += (f" {sign} " if text else ("-" if sign == "-" else "")) + plain
        return text

    def values(self, scores: torch.Tensor, acts: Mapping[str, object]) -> torch.Tensor:
        """``(B,)`` objective values from the model's ``scores`` and captured ``acts``."""
        total = torch.zeros(scores.shape[0], device=scores.device, dtype=scores.dtype)
        for term in self.terms:
            total = total + term.weight * self._term(term, scores, acts)
        return total

    def _term(self, term: Term, scores: torch.Tensor, acts: Mapping[str, object]) -> torch.Tensor:
        if term.kind == "logit":
            classes = scores.shape[1]
            if term.channel is not None:
                self._check_index(term, term.channel, classes, "class")
                return scores[:, term.channel]
            return gather_target(scores, self.target)
        act = acts.get(term.layer)
        if not isinstance(act, torch.Tensor):
            got = "no output" if act is None else f"a {type(act).__name__}"
            raise InvalidParamsError(
                f"Method {self.method!r}: layer {term.layer!r} produced {got} during the "
                "forward pass; objectives need a layer whose output is one tensor."
            )
        if term.kind == "layer":
            return act.float().pow(2).flatten(1).mean(1)
        if act.ndim < 2:
            raise InvalidParamsError(
                f"Method {self.method!r}: objective {str(term)!r} needs channels, but layer "
                f"{term.layer!r} outputs shape {tuple(act.shape)}."
            )
        self._check_index(term, term.channel, act.shape[1], f"channel of {term.layer!r}")
        chan = act[:, term.channel]
        if term.kind == "channel":
            return chan.float().flatten(1).mean(1) if chan.ndim > 1 else chan.float()
        spatial = tuple(chan.shape[1:])
        if term.position == "center":
            where = tuple(s // 2 for s in spatial)
        else:
            where = tuple(term.position)  # type: ignore[arg-type]
        if len(where) != len(spatial) or any(not 0 <= w < s for w, s in zip(where, spatial)):
            raise InvalidParamsError(
                f"Method {self.method!r}: neuron position {where} of objective {str(term)!r} "
                f"is outside layer {term.layer!r}'s spatial shape {spatial}; give "
                f"{len(spatial)} indices in range, or '@center'."
            )
        return chan[(slice(None), *where)].float()

    def _check_index(self, term: Term, index: int | None, size: int, what: str) -> None:
        if index is None or not 0 <= index < size:
            raise InvalidParamsError(
                f"Method {self.method!r}: objective {str(term)!r} asks for {what} {index}, "
                f"but there are {size} (0..{size - 1})."
            )
