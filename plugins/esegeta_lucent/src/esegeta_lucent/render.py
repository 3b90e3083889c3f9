"""The optimisation: Lucent's ``render_vis`` in 2D, esegeta's own loop in 3D.

Both optimise a parameterized image batch with Adam to maximise an
:class:`~esegeta_lucent.objectives.Objective`, under random transforms, and both read
activations through esegeta's own forward hooks (removed on exit). Lucent's
``render_vis`` hooks every sub-module of the model it is given and never removes those
hooks, so it is given :class:`_Forward`, a module with no children that calls the
model: Lucent then hooks nothing.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from esegeta_lucent import volume
from esegeta_lucent.objectives import Objective, captured


@dataclass(frozen=True)
class Job:
    """Everything one visualization run needs, independent of the rank."""

    model: nn.Module
    objective: Objective
    layers: dict[str, nn.Module]
    shape: tuple[int, ...]
    """``(B, C, *image_size)``."""
    fft: bool
    decorrelate: bool
    init_std: float
    lr: float
    steps: int
    pad: int
    jitter: int
    scale: float
    rotate: int
    imagenet: bool
    device: torch.device

    @property
    def size(self) -> tuple[int, ...]:
        return self.shape[2:]

    @property
    def scales(self) -> list[float]:
        """Lucid's 11 scale factors, ``1 +- scale`` (``scale=0.1`` gives 0.9 .. 1.1)."""
        return [1 + self.scale * (i - 5) / 5 for i in range(11)]

    @property
    def angles(self) -> list[int]:
        """Lucid's angle list: every degree in ``[-rotate, rotate]`` plus five zeros."""
        return list(range(-self.rotate, self.rotate + 1)) + 5 * [0]


@dataclass
class Rendered:
    """The optimised images in [0, 1] and the objective along the way."""

    images: torch.Tensor
    history: torch.Tensor
    """``(steps, B)``: each item's objective at every step (on the transformed image)."""
    start: torch.Tensor
    """``(B,)``: the objective on the initial images (no transforms)."""
    final: torch.Tensor
    """``(B,)``: the objective on the returned images (no transforms)."""


class _ForwardError(Exception):
    """Carries a model error through ``render_vis``, which swallows RuntimeErrors."""


class _Forward(nn.Module):
    """What Lucent's ``render_vis`` sees: calls ``model`` (moving the image to its
    device) and keeps the scores, but exposes no sub-modules for Lucent to hook."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        super().__init__()
        object.__setattr__(self, "target", model)  # not registered as a child
        self.device = device
        self.scores: torch.Tensor | None = None

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        try:
            self.scores = self.target(image.to(self.device))
        except RuntimeError as exc:
            raise _ForwardError(exc) from exc
        return self.scores


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """No gradients for the model's parameters while optimising the image."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def numpy_seeded_from_torch() -> Iterator[None]:
    """Seed numpy's global generator (Lucent's transforms draw from it) from torch's,
    so that ``explain(seed=...)`` fixes them too; numpy's state is restored on exit."""
    state = np.random.get_state()
    np.random.seed(int(torch.randint(0, 2**31 - 1, (1,)).item()))
    try:
        yield
    finally:
        np.random.set_state(state)


Activations = Callable[[], dict[str, object]]
"""``take`` of :func:`~esegeta_lucent.objectives.captured`: the latest layer outputs."""


def _values(
    job: Job, forward: Callable[[torch.Tensor], torch.Tensor], take: Activations
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The objective of images without transforms (before and after optimising)."""

    def evaluate(image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            scores = forward(volume.normalize_imagenet(image) if job.imagenet else image)
            return job.objective.values(scores, take()).detach()

    return evaluate


def _transforms(
    job: Job,
    pad: Callable[[int], volume.Transform],
    jitter: Callable[[int], volume.Transform],
    scale: Callable[[list[float]], volume.Transform],
    rotate: Callable[[list[int]], volume.Transform],
) -> list[volume.Transform]:
    """Lucid's transform sequence for ``job`` from one library's transforms: pad,
    jitter, random scale, random rotation, a smaller jitter, then the normalisation."""
    transforms: list[volume.Transform] = []
    if job.pad:
        transforms.append(pad(job.pad))
    if job.jitter > 1:
        transforms.append(jitter(job.jitter))
    if job.scale:
        transforms.append(scale(job.scales))
    if job.rotate:
        transforms.append(rotate(job.angles))
    if job.jitter // 2 > 1:
        transforms.append(jitter(job.jitter // 2))
    if job.imagenet:
        transforms.append(volume.normalize_imagenet)
    return transforms


def render_2d(job: Job) -> Rendered:
    """Lucent: ``param.image``, Lucid's transforms and ``render_vis``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # kornia 0.4 uses torch.jit.script
        from lucent.optvis import param, render, transform

    batch, channels, h, w = job.shape
    # Lucent decorrelates only its default 3 channels; ``channels`` disables it
    params, image_f = param.image(
        w,
        h,
        sd=job.init_std,
        batch=batch,
        decorrelate=job.decorrelate,
        fft=job.fft,
        channels=None if channels == 3 else channels,
    )
    transforms = _transforms(
        job,
        pad=lambda width: transform.pad(width, mode="constant", constant_value=0.5),
        jitter=transform.jitter,
        scale=transform.random_scale,
        rotate=transform.random_rotate,
    )

    forward = _Forward(job.model, job.device)
    history: list[torch.Tensor] = []
    with frozen(job.model), captured(job.layers) as take, numpy_seeded_from_torch():
        evaluate = _values(job, forward, take)
        start = evaluate(image_f())

        def objective_f(_lucent_hook: object) -> torch.Tensor:
            # render_vis runs the model (setting forward.scores) before the objective
            values = job.objective.values(forward.scores, take())  # type: ignore[arg-type]
            history.append(values.detach())
            return -values.sum()

        try:
            render.render_vis(
                forward,
                objective_f,
                param_f=lambda: (params, image_f),
                optimizer=lambda p: torch.optim.Adam(p, lr=job.lr),
                transforms=transforms,
                thresholds=(job.steps,),
                preprocess=False,
                progress=False,
                show_image=False,
                fixed_image_size=(h, w),
            )
        except _ForwardError as exc:
            raise exc.__cause__ from None  # type: ignore[misc]
        images = image_f().detach().to(job.device)
        final = evaluate(images)
    return Rendered(images, torch.stack(history).to(job.device), start, final)


def render_nd(job: Job) -> Rendered:
    """esegeta's loop for 3D: :mod:`esegeta_lucent.volume`'s parameterization and
    transforms, Adam, the same objectives."""
    params, image_f = volume.image_param(
        job.shape, fft=job.fft, decorrelate=job.decorrelate, sd=job.init_std, device=job.device
    )
    transforms = _transforms(
        job,
        pad=volume.pad,
        jitter=volume.jitter,
        scale=volume.random_scale,
        rotate=volume.random_rotate,
    )
    transforms.append(volume.resize(job.size))
    transform_f = volume.compose(transforms)

    optimizer = torch.optim.Adam(params, lr=job.lr)
    history: list[torch.Tensor] = []
    with frozen(job.model), captured(job.layers) as take:
        evaluate = _values(job, job.model, take)
        start = evaluate(image_f())
        for _ in range(job.steps):
            optimizer.zero_grad()
            values = job.objective.values(job.model(transform_f(image_f())), take())
            (-values.sum()).backward()
            optimizer.step()
            history.append(values.detach())
        images = image_f().detach()
        final = evaluate(images)
    return Rendered(images, torch.stack(history), start, final)


def default_decorrelate(channels: int) -> bool:
    """Lucid decorrelates colours by default; its matrix exists for 3 channels only."""
    return channels == 3
