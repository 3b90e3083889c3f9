"""Layer layouts: a layer's output read as a ``(B, C, *grid)`` map, whatever its layout.

CNN layers output ``(B, C, *spatial)``. Vision transformers output tokens ``(B, N, C)``
(with class, distillation or register tokens before the patch grid, 2D or 3D), Swin
stages output channels-last ``(B, H, W, C)`` or ``(B, D, H, W, C)``. Every method that
reads or replaces a layer's output sees it channels-first: the core puts a
:class:`~esegeta_core.sites.LayoutView` after the layer for the call, whose output is
the ``(B, C, *grid)`` map and from which the rest of the model gets the original layout
back (extra tokens untouched). :func:`infer_layout` finds the layout from the output's
shape, the input's shape and the model's patch embedding; when two readings remain
possible it refuses, listing what it saw and how to say it (``reshape=``).
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from esegeta_core.errors import InvalidParamsError

LayoutKind = Literal["channels_first", "channels_last", "tokens"]

MAX_EXTRA_TOKENS = 16
"""At most this many tokens before the grid (class, distillation, registers)."""


@dataclass(frozen=True)
class Layout:
    """How a layer's output is laid out: ``kind``, the spatial ``grid`` and, for tokens,
    how many ``extra`` tokens come before the grid."""

    kind: LayoutKind
    grid: tuple[int, ...] = ()
    extra: int = 0
    reason: str = field(default="", compare=False)
    """How the layout was found (for records and messages)."""

    @property
    def trivial(self) -> bool:
        return self.kind == "channels_first"

    def to_channels_first(self, y: torch.Tensor) -> torch.Tensor:
        """``(B, C, *grid)`` from the layer's output ``y``."""
        if self.kind == "channels_first":
            return y
        if self.kind == "channels_last":
            return y.movedim(-1, 1)
        tokens = y[:, self.extra :]
        return tokens.transpose(1, 2).reshape(y.shape[0], y.shape[2], *self.grid)

    def restore(self, view: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The layer's output layout again, from a (possibly replaced) channels-first
        ``view`` of ``y``; extra tokens come from ``y``. Always a new tensor."""
        if self.kind == "channels_first":
            return view.clone()
        if self.kind == "channels_last":  # a copy even where the strides already fit:
            # the view of ``y`` a method recorded must not share in-place code's storage
            return view.movedim(1, -1).clone(memory_format=torch.contiguous_format)
        grid_tokens = view.flatten(2).transpose(1, 2)
        if self.extra:
            extra = y[:, : self.extra]
            if extra.shape[0] != grid_tokens.shape[0]:  # one item, several replacements
                extra = extra.expand(grid_tokens.shape[0], *extra.shape[1:])
            return torch.cat([extra, grid_tokens], dim=1)
        return grid_tokens.clone(memory_format=torch.contiguous_format)  # as above

    @property
    def spec(self) -> str:
        """The ``reshape=`` string that gives this layout again (``"tokens:1:14x14"``)."""
        if self.kind == "channels_first" or not self.grid:
            return self.kind
        return f"{self.kind}:{self.extra}:{'x'.join(str(g) for g in self.grid)}"

    def record(self) -> dict[str, Any]:
        """Plain data for records and reports; ``reshape`` repeats the call with it."""
        return {"kind": self.kind, "grid": list(self.grid), "extra_tokens": self.extra,
                "reason": self.reason, "reshape": self.spec}  # fmt: skip


class _Reshaped(torch.autograd.Function):
    """The layer's output ``y`` again, with ``view = fn(y)`` receiving ``fn`` of the
    gradient: what pytorch-grad-cam does with a ``reshape_transform`` (it applies the
    callable to activations and to gradients), as an autograd function."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, view: torch.Tensor, fn: Any) -> torch.Tensor:
        ctx.fn = fn
        return y.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        return grad, ctx.fn(grad), None


@dataclass(frozen=True)
class CallableLayout:
    """A layout given as a callable ``fn(output) -> (B, C, *grid)``, like
    pytorch-grad-cam's ``reshape_transform``: methods read the view and its gradient
    (``fn`` of the output's gradient, which is right for a rearrangement such as
    dropping tokens, reshaping and permuting). Without an inverse, a method that
    replaces the layer's output (ablation, layer Integrated Gradients) is refused."""

    fn: Any
    kind: str = "callable"
    grid: tuple[int, ...] = ()
    extra: int = 0
    reason: str = "given as a callable"

    @property
    def trivial(self) -> bool:
        return False

    def to_channels_first(self, y: torch.Tensor) -> torch.Tensor:
        view = self.fn(y.detach())
        return view.requires_grad_(y.requires_grad) if view.is_floating_point() else view

    def restore(self, view: torch.Tensor, y: torch.Tensor, produced: torch.Tensor) -> torch.Tensor:
        same = view is produced or (
            produced is not None and view.shape == produced.shape and torch.equal(view, produced)
        )
        if not same:  # values changed (a hook replaced them), not just wrapped
            raise InvalidParamsError(
                "reshape=callable has no inverse, so a method that replaces the layer's "
                "output (ablation, layer Integrated Gradients, conductance) cannot put its "
                "values back into the model. Give the layout instead, e.g. "
                "reshape='tokens:1:14x14' or 'channels_last'."
            )
        if not (y.requires_grad and view.requires_grad):
            return y.clone()
        return _Reshaped.apply(y, view, self.fn)

    def record(self) -> dict[str, Any]:
        name = getattr(self.fn, "__qualname__", type(self.fn).__name__)
        return {"kind": "callable", "grid": list(self.grid), "extra_tokens": 0,
                "reason": f"given: {name}"}  # fmt: skip


ReshapeSpec = Layout | str | Mapping[str, Any] | Any | None
"""``reshape=``: None or ``"auto"`` (inferred), ``"channels_first"``,
``"channels_last"``, ``"tokens"`` (grid and extra tokens inferred), a string such as
``"tokens:1:14x14"`` (kind, extra tokens, grid), a mapping with those keys, a
:class:`Layout`, or a callable ``fn(output) -> (B, C, *grid)`` like pytorch-grad-cam's
``reshape_transform`` (methods that replace the layer's output need one of the others)."""


def parse_reshape(spec: ReshapeSpec, *, method: str = "") -> Layout | str | None:
    """A :class:`Layout`, a kind to infer the rest of (a str), or None (infer all)."""
    if spec is None or isinstance(spec, Layout):
        return spec
    if isinstance(spec, Mapping):
        try:
            kind = spec["kind"]
            grid = tuple(int(g) for g in spec.get("grid", ()))
            extra = int(spec.get("extra", spec.get("extra_tokens", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidParamsError(_bad_spec(spec, method)) from exc
        return _checked(Layout(kind, grid, extra, "given"), spec, method)
    if not isinstance(spec, str):
        raise InvalidParamsError(_bad_spec(spec, method))
    if spec == "auto":
        return None
    match = re.fullmatch(r"(channels_first|channels_last|tokens)(?::(\d+))?(?::([\dx]+))?", spec)
    if match is None:
        raise InvalidParamsError(_bad_spec(spec, method))
    kind, extra, grid = match.groups()
    if extra is None and grid is None:
        return kind
    sizes = tuple(int(g) for g in grid.split("x")) if grid else ()
    return _checked(Layout(kind, sizes, int(extra or 0), "given"), spec, method)  # type: ignore[arg-type]


def _checked(layout: Layout, spec: object, method: str) -> Layout:
    if layout.kind not in ("channels_first", "channels_last", "tokens") or (
        layout.kind == "tokens" and not layout.grid
    ):
        raise InvalidParamsError(_bad_spec(spec, method))
    return layout


def _bad_spec(spec: object, method: str) -> str:
    who = f"Method {method!r}: " if method else ""
    return (
        f"{who}reshape={spec!r} is not a layout. Use 'auto', 'channels_first', "
        "'channels_last', 'tokens', 'tokens:EXTRA:GRID' such as 'tokens:1:14x14' (one class "
        "token before a 14x14 patch grid; 3D: 'tokens:0:8x8x8'), or "
        "{'kind': 'tokens', 'extra': 1, 'grid': [14, 14]}."
    )


def _consistent(grid: Sequence[int], spatial: Sequence[int]) -> bool:
    """Whether ``grid`` could be ``spatial`` divided by one common stride (rounded)."""
    if len(grid) != len(spatial) or any(g < 1 or g > s for g, s in zip(grid, spatial)):
        return False
    stride = spatial[0] / grid[0]
    return all(abs(s / stride - g) < 1.0 for g, s in zip(grid, spatial))


def patch_size(model: nn.Module, rank: int) -> tuple[int, ...] | None:
    """The patch size of a model's patch embedding: its first convolution whose kernel
    equals its stride (> 1), or a ``patch_size`` attribute."""
    for module in model.modules():
        if (
            isinstance(module, nn.modules.conv._ConvNd)
            and len(module.stride) == rank
            and tuple(module.kernel_size) == tuple(module.stride)
            and max(module.stride) > 1
        ):
            return tuple(int(s) for s in module.stride)
    for module in model.modules():
        value = getattr(module, "patch_size", None)
        if isinstance(value, int) and value > 1:
            return (value,) * rank
        if isinstance(value, (tuple, list)) and len(value) == rank:
            return tuple(int(v) for v in value)
    return None


def _token_grid(
    n: int, spatial: Sequence[int], patch: Sequence[int] | None
) -> tuple[list[tuple[tuple[int, ...], int]], str]:
    """Candidate (grid, extra tokens) readings of ``n`` tokens and how they were found."""
    if patch is not None:
        grid = tuple(max(1, s // p) for s, p in zip(spatial, patch))
        extra = n - math.prod(grid)
        if 0 <= extra <= MAX_EXTRA_TOKENS:
            return [(grid, extra)], f"patch size {tuple(patch)}"
    found = []
    for extra in range(0, MAX_EXTRA_TOKENS + 1):
        m = n - extra
        if m < 1:
            break
        scale = (m / math.prod(spatial)) ** (1 / len(spatial))
        grid = tuple(max(1, round(s * scale)) for s in spatial)
        if math.prod(grid) == m and _consistent(grid, spatial):
            found.append((grid, extra))
    return found, "token count and the input's shape"


def infer_layout(
    shape: Sequence[int],
    input_shape: Sequence[int],
    *,
    patch: Sequence[int] | None = None,
    last_dim_features: int | None = None,
    first_dim_features: int | None = None,
    channels_last_seen: bool = True,
    given: Layout | str | None = None,
    layer: str = "",
    method: str = "",
) -> Layout:
    """The layout of a layer output shaped ``shape`` for inputs shaped ``input_shape``.

    ``last_dim_features`` / ``first_dim_features``: the feature count of the layer's
    last parametrised module when it acts on the last dimension (Linear, LayerNorm) or
    on dimension 1 (Conv, BatchNorm), as evidence between channels-first and -last.
    ``channels_last_seen``: whether any module of the model works on channels-last
    data (a Linear or LayerNorm applied to a spatial tensor); if none does, no output
    is read as channels-last. ``given``: a full :class:`Layout` (checked against the
    shape) or a kind to infer.
    """
    shape = tuple(shape)
    spatial = tuple(input_shape[2:])
    rank = len(spatial)
    who = f"Method {method!r}: " if method else ""
    where = f"layer {layer!r}" if layer else "the layer"
    if isinstance(given, Layout):
        return _check_given(given, shape, rank, who, where)
    if len(shape) == rank + 2 and given != "tokens":
        kind = given if given in ("channels_first", "channels_last") else None
        if kind is None and not channels_last_seen:
            kind = "channels_first"
        if kind is None:
            kind = _first_or_last(shape, spatial, last_dim_features, first_dim_features)
        if kind is None:
            raise InvalidParamsError(
                f"{who}{where} outputs {shape}, which reads as channels-first (B, "
                f"C={shape[1]}, {shape[2:]}) or channels-last (B, {shape[1:-1]}, "
                f"C={shape[-1]}) for the input {tuple(input_shape)}. Say which: "
                "reshape='channels_first' or reshape='channels_last'."
            )
        grid = tuple(shape[2:]) if kind == "channels_first" else tuple(shape[1:-1])
        how = "given" if given is not None else "inferred"
        return Layout(kind, grid, 0, f"{kind.replace('_', '-')} ({how})")
    if len(shape) == 3 and given in (None, "tokens"):
        candidates, how = _token_grid(shape[1], spatial, patch)
        if len(candidates) == 1:
            grid, extra = candidates[0]
            return Layout("tokens", grid, extra, f"tokens: grid from the {how}")
        seen = ", ".join(f"{e} extra + {'x'.join(map(str, g))}" for g, e in candidates)
        raise InvalidParamsError(
            f"{who}{where} outputs tokens {shape} for the input {tuple(input_shape)}, and "
            f"the patch grid cannot be told from them ({'readings: ' + seen if seen else 'no '}"
            f"{'' if seen else 'reading fits'}; no patch embedding found). Give it: "
            f"reshape='tokens:EXTRA:GRID', e.g. 'tokens:1:{'x'.join(['14'] * rank)}'."
        )
    raise InvalidParamsError(
        f"{who}{where} outputs {shape}, which has no {rank}D spatial layout for the input "
        f"{tuple(input_shape)} (expected (B, C, *spatial), channels-last or tokens (B, N, "
        "C)). Choose a convolutional layer (or a block ending in one), a transformer "
        "block, or layer='auto'."
    )


def _first_or_last(
    shape: tuple[int, ...],
    spatial: tuple[int, ...],
    last_dim_features: int | None,
    first_dim_features: int | None,
) -> LayoutKind | None:
    """Channels-first or -last for a rank-matching output; None when both readings fit
    and nothing tells them apart."""
    cf = _consistent(shape[2:], spatial)
    cl = _consistent(shape[1:-1], spatial)
    if cl and not cf:
        return "channels_last"
    if (cf and not cl) or (not cf and not cl):
        # not cf and not cl: an unusual reduction (adaptive pooling); CNN convention,
        # unless the last layer acts on the last dimension
        if not cf and not cl and last_dim_features == shape[-1] != shape[1]:
            return "channels_last"
        return "channels_first"
    if last_dim_features == shape[-1] and first_dim_features != shape[1]:
        return "channels_last"
    if first_dim_features == shape[1] and last_dim_features != shape[-1]:
        return "channels_first"
    return None


def _check_given(layout: Layout, shape: tuple[int, ...], rank: int, who: str, where: str) -> Layout:
    ok = {
        "channels_first": len(shape) == rank + 2,
        "channels_last": len(shape) == rank + 2,
        "tokens": len(shape) == 3
        and len(layout.grid) == rank
        and layout.extra + math.prod(layout.grid) == shape[1],
    }[layout.kind]
    if not ok:
        raise InvalidParamsError(
            f"{who}reshape {layout.kind} grid {layout.grid} extra {layout.extra} does not fit "
            f"{where}'s output {shape}."
        )
    grid = layout.grid or (tuple(shape[2:]) if layout.kind == "channels_first" else shape[1:-1])
    return Layout(layout.kind, tuple(grid), layout.extra, "given")


def layer_layouts(
    model: nn.Module,
    root: nn.Module,
    inputs: torch.Tensor,
    layers: Sequence[tuple[str, nn.Module]],
    *,
    reshape: ReshapeSpec = None,
    method: str = "",
) -> dict[int, Layout]:
    """The layout of each of ``layers`` (``(path, module)`` of the user's model ``root``),
    from one no-grad pass of ``model`` (its score wrapper) on ``inputs[:1]``.

    Layouts depend on shapes only: they are kept per network (its modules as they are
    now), layers, input shape and reshape for the process, so later calls (a
    perturbation method's, a run's other jobs) skip the probe pass. A callable
    ``reshape`` is probed every time."""
    if not layers:
        return {}
    key = None
    if not callable(reshape) or isinstance(reshape, Layout):
        key = (
            tuple((path, id(module)) for path, module in layers),
            # every module of the network: a module swapped in (another stride, another
            # patch size) can change the layer's output, so it is probed again
            tuple(id(m) for m in root.modules()),
            tuple(inputs.shape[1:]),
            inputs.dtype,
            inputs.device,
            repr(reshape),
        )
        known = _layouts.get(root, {}).get(key)
        if known is not None:
            return dict(known)
    found = _probe_layouts(model, root, inputs, layers, reshape=reshape, method=method)
    if key is not None:
        _layouts.setdefault(root, {})[key] = dict(found)
    return found


_layouts: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], dict[int, Layout]]] = (
    weakref.WeakKeyDictionary()
)


def _probe_layouts(
    model: nn.Module,
    root: nn.Module,
    inputs: torch.Tensor,
    layers: Sequence[tuple[str, nn.Module]],
    *,
    reshape: ReshapeSpec,
    method: str,
) -> dict[int, Layout]:
    """:func:`layer_layouts` measured: one probe pass."""
    given = None if callable(reshape) else parse_reshape(reshape, method=method)
    outputs: dict[int, Any] = {}
    last_leaf: dict[int, nn.Module] = {}
    open_layers: list[int] = []
    wanted = {id(m) for _, m in layers}
    channels_last = [False]

    def pre(module: nn.Module, args: Any) -> None:
        if id(module) in wanted:
            open_layers.append(id(module))
        if isinstance(module, (nn.Linear, nn.LayerNorm)) and args:
            first = args[0]
            if isinstance(first, torch.Tensor) and first.ndim == inputs.ndim:
                channels_last[0] = True

    def post(module: nn.Module, args: Any, output: Any) -> None:
        if id(module) in wanted:
            outputs.setdefault(id(module), output)
            if open_layers and open_layers[-1] == id(module):
                open_layers.pop()
        elif (open_layers and _features(module, last=True)) or _features(module, last=False):
            for layer in open_layers:
                last_leaf[layer] = module

    handles = [m.register_forward_pre_hook(pre) for m in root.modules()]
    handles += [m.register_forward_hook(post) for m in root.modules()]
    try:
        with torch.no_grad():
            model(inputs[:1])
    finally:
        for handle in handles:
            handle.remove()
    patch = patch_size(root, inputs.ndim - 2)
    layouts: dict[int, Any] = {}
    for path, module in layers:
        out = outputs.get(id(module))
        if not isinstance(out, torch.Tensor):
            continue  # not run, or not a tensor: the method reports it
        if callable(reshape) and not isinstance(reshape, Layout):
            layouts[id(module)] = _callable_layout(reshape, out, inputs, path, method)
            continue
        leaf = last_leaf.get(id(module), module)
        layouts[id(module)] = infer_layout(
            tuple(out.shape),
            tuple(inputs.shape),
            patch=patch,
            last_dim_features=_features(leaf, last=True),
            first_dim_features=_features(leaf, last=False),
            channels_last_seen=channels_last[0],
            given=given,
            layer=path,
            method=method,
        )
    return layouts


def _callable_layout(
    fn: Any, out: torch.Tensor, inputs: torch.Tensor, path: str, method: str
) -> CallableLayout:
    """A :class:`CallableLayout`, after checking what ``fn`` makes of the probe's output."""
    who = f"Method {method!r}: " if method else ""
    try:
        view = fn(out.detach())
    except Exception as exc:
        raise InvalidParamsError(
            f"{who}reshape callable failed on layer {path!r}'s output {tuple(out.shape)}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    shape = tuple(view.shape) if isinstance(view, torch.Tensor) else type(view).__name__
    if (
        not isinstance(view, torch.Tensor)
        or view.ndim != inputs.ndim
        or view.shape[0] != out.shape[0]
    ):
        raise InvalidParamsError(
            f"{who}reshape callable turned layer {path!r}'s output {tuple(out.shape)} into "
            f"{shape}; it must return (B, C, *grid) with {inputs.ndim - 2} grid dimensions "
            f"like the input {tuple(inputs.shape)}."
        )
    return CallableLayout(fn, grid=tuple(view.shape[2:]))


def _features(module: nn.Module, *, last: bool) -> int | None:
    """Feature count of a module acting on the last dimension (Linear, LayerNorm), or on
    dimension 1 (convolutions, batch and group norm)."""
    if last:
        if isinstance(module, nn.Linear):
            return module.out_features
        if isinstance(module, nn.LayerNorm):
            return int(module.normalized_shape[-1])
        return None
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    return None
