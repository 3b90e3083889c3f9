"""Tiny models trained on the synthetic data, on the CPU, the first time they are asked for.

``pretrained(name)`` trains a model from a fixed recipe (seeded; one CPU thread, so the
weights are the same on every run of the same machine and torch version), measures it on
held-out generated data, and caches the weights and a JSON record of the metrics under
the cache folder. Later calls load the weights (``torch.load(weights_only=True)``)
unless the recipe changed: the record holds a hash of the recipe, the model's parameter
shapes and a fingerprint of the generator's output, so a change to any of them retrains.
Files are written atomically (temporary file, then rename), so an interrupted training
never leaves a half-written cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from esegeta_core.devices import torch_threads
from esegeta_core.errors import PretrainedNotFoundError, did_you_mean
from esegeta_core.progress import progress_bar
from esegeta_core.synthetic.models import ShapesNet, ShapesUNet, ShapesViT, VesselUNet
from esegeta_core.synthetic.shapes import (
    SHAPE_CLASSES,
    ShapesData,
    ShapesSegmentationData,
    make_shapes,
    make_shapes_segmentation,
)
from esegeta_core.synthetic.vessels import VesselsData, make_vessels

logger = logging.getLogger(__name__)

RECIPE_FORMAT = 1
"""Bumped when the training code changes in a way the recipe hash cannot see."""

TRAIN_SEED = 10_000
"""Epoch ``k`` of training draws its data with seed ``TRAIN_SEED + k``."""

EVAL_SEED = 20_000
"""Seed of the held-out set behind the stored metrics."""

SyntheticData = ShapesData | ShapesSegmentationData | VesselsData


_GENERATORS: dict[str, Callable[..., Any]] = {
    "shapes": make_shapes,
    "shapes_segmentation": make_shapes_segmentation,
    "vessels": make_vessels,
}
_CLASSES: dict[str, tuple[str, ...]] = {
    "shapes": SHAPE_CLASSES,
    "shapes_segmentation": ("background", *SHAPE_CLASSES),
    "vessels": ("background", "vessel"),
}
_MODELS: dict[str, type[nn.Module]] = {
    "ShapesNet": ShapesNet,
    "ShapesViT": ShapesViT,
    "ShapesUNet": ShapesUNet,
    "VesselUNet": VesselUNet,
}


@dataclass(frozen=True)
class Recipe:
    """How one pretrained model is made: data, model, schedule and evaluation.

    Training runs one epoch per entry of ``phases``; each epoch draws fresh data from
    ``generator`` with ``data`` updated by the phase's keys (``size``, ``n`` and any
    other generator argument). Small canvases first make the training cheap; the models
    are fully convolutional, so they apply to ``image_size`` inputs unchanged.
    """

    task: Literal["classification", "segmentation"]
    generator: str
    model: str
    phases: tuple[Mapping[str, Any], ...]
    image_size: int
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 32
    lr: float = 0.01
    dice_weight: float = 0.0
    eval_n: int = 500
    seed: int = 0
    target: float = 0.0
    pointing_tolerance: float | None = None

    def as_json(self) -> dict[str, Any]:
        """The recipe as plain JSON data (tuples become lists)."""
        data: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(self)))
        return data


_RECIPES: dict[str, Recipe] = {
    # 64 px images, one shape of radius 5-8 px: trained mostly on 32 px canvases (cheap,
    # and the object fills more of the global average), then one epoch at full size
    "shapes_classifier": Recipe(
        task="classification",
        generator="shapes",
        model="ShapesNet",
        # 4 phases at lr 0.01 reached 0.876-0.986 over seeds 0-3; 6 at 0.005: 0.974-0.986
        phases=(*({"size": 32, "n": 2000},) * 5, {"size": 64, "n": 1000}),
        image_size=64,
        batch_size=32,
        lr=0.005,
        eval_n=500,
        target=0.95,
        # TorchRay's 15 px at 224 px, scaled to 64 px
        pointing_tolerance=4.0,
    ),
    # a vision transformer learns the shapes far more slowly than the CNN: larger shapes
    # (7-11 px), less texture and noise, full-size canvases (its position embeddings are
    # for 8 x 8 patches); 16 phases at lr 0.002 reached 0.94-0.98 (seed 0, 500 images)
    "shapes_vit": Recipe(
        task="classification",
        generator="shapes",
        model="ShapesViT",
        phases=({"size": 64, "n": 2000},) * 16,
        image_size=64,
        data={"radius": (7.0, 11.0), "noise": 0.05, "texture": 0.05},
        batch_size=32,
        lr=0.002,
        eval_n=500,
        target=0.9,
        pointing_tolerance=4.0,  # TorchRay's 15 px at 224 px, scaled to 64 px
    ),
    "shapes_segmenter": Recipe(
        task="segmentation",
        generator="shapes_segmentation",
        model="ShapesUNet",
        # lr 0.01 or 5 phases collapsed a class on some seeds and CPUs (dice 0.44-0.85);
        # 8 phases at 0.005 reached 0.981-0.993 on seeds 0-3
        phases=({"size": 32, "n": 1000, "objects": (1, 2)},) * 8,
        image_size=64,
        batch_size=16,
        lr=0.005,
        dice_weight=1.0,
        eval_n=200,
        target=0.85,
        pointing_tolerance=4.0,  # TorchRay's 15 px at 224 px, scaled to 64 px
    ),
    "vessel_segmenter": Recipe(
        task="segmentation",
        generator="vessels",
        model="VesselUNet",
        phases=({"size": 16, "n": 256},) * 3,
        image_size=32,
        batch_size=8,
        lr=0.02,
        dice_weight=1.0,
        eval_n=64,
        target=0.75,
        pointing_tolerance=2.0,  # TorchRay's 15 px at 224 px, scaled to 32 voxels
    ),
}

PRETRAINED_NAMES: tuple[str, ...] = tuple(_RECIPES)
"""The names :func:`pretrained` knows."""


@dataclass(frozen=True)
class TrainedModel:
    """A trained synthetic-benchmark model with what you need to explain and score it.

    Attributes:
        name: the recipe name (one of :data:`PRETRAINED_NAMES`).
        model: the model, on the CPU, in eval mode.
        task: ``"classification"`` or ``"segmentation"``.
        classes: class names, index = class id.
        cam_layer: the layer name CAM-style methods should use.
        image_size: the side of the images or volumes it was evaluated on.
        metrics: the stored record: ``accuracy`` (classifier) or ``dice`` (mean over
            foreground classes) and per-class values on ``eval_n`` held-out items,
            ``training_seconds``, the recipe and its ``recipe_hash``, versions.
        trained: True when this call trained the model, False when it loaded it.
        path: the weights file in the cache (None if it could not be written).
        pointing_tolerance: the pointing-game tolerance in pixels or voxels that
            matches TorchRay's 15 px at 224 px (4 px at 64 px, 2 voxels at 32^3).
        recipe: the :class:`Recipe` it was made with.
    """

    name: str
    model: nn.Module
    task: str
    classes: tuple[str, ...]
    cam_layer: str
    image_size: int
    metrics: dict[str, Any]
    trained: bool
    path: Path | None
    pointing_tolerance: float | None
    recipe: Recipe

    def test_data(self, n: int = 64, *, seed: int = 0) -> SyntheticData:
        """``n`` fresh items from the model's generator at ``image_size``.

        Seeds below ``TRAIN_SEED`` (10 000) never overlap the training data.
        """
        return _generate(self.recipe, n, seed)

    def describe(self) -> str:
        """One line: model, size, held-out score and training time."""
        params = sum(p.numel() for p in self.model.parameters())
        key = "accuracy" if self.task == "classification" else "dice"
        return (
            f"{type(self.model).__name__} ({params:,} parameters), {key} "
            f"{self.metrics[key]:.3f} on {self.metrics['eval_n']} held-out "
            f"{self.image_size} px items, trained in {self.metrics['training_seconds']:.0f} s"
        )


def _generate(recipe: Recipe, n: int, seed: int, **overrides: Any) -> SyntheticData:
    kwargs = {**recipe.data, "size": recipe.image_size, **overrides}
    data: SyntheticData = _GENERATORS[recipe.generator](n, seed=seed, **kwargs)
    return data


def _build(recipe: Recipe) -> nn.Module:
    return _MODELS[recipe.model](**recipe.model_kwargs)


def _fingerprint(recipe: Recipe) -> str:
    """A hash of the recipe, the model's parameter shapes and a little generated data,
    so that a change to the recipe, the architecture or the generator retrains."""
    digest = hashlib.sha256()
    digest.update(json.dumps([RECIPE_FORMAT, recipe.as_json()], sort_keys=True).encode())
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = _build(recipe)
    shapes = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    digest.update(json.dumps(shapes).encode())
    sample = _generate(recipe, 2, 0, size=recipe.phases[0]["size"])
    for value in dataclasses.astuple(sample):
        if isinstance(value, torch.Tensor):
            array = value.numpy()
            if array.dtype.kind == "f":
                # rounded: last-bit differences between platforms must not retrain
                array = np.round(array.astype(np.float64), 3)
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$ESEGETA_CACHE/models``, or ``~/.cache/esegeta/models`` when it is not set."""
    root = os.environ.get("ESEGETA_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "esegeta"
    return base / "models"


def _loss(recipe: Recipe, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(logits, labels)
    if recipe.dice_weight:
        # soft Dice over the foreground classes, pooled over the batch
        probs = logits.softmax(1)[:, 1:]
        onehot = F.one_hot(labels, logits.shape[1]).movedim(-1, 1)[:, 1:].to(probs.dtype)
        dims = (0, *range(2, logits.ndim))
        inter = (probs * onehot).sum(dims)
        total = probs.sum(dims) + onehot.sum(dims)
        loss = loss + recipe.dice_weight * (1 - (2 * inter + 1) / (total + 1)).mean()
    return loss


def _inputs_labels(data: SyntheticData) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, VesselsData):
        return data.volumes, data.labels
    return data.images, data.labels


def _train(name: str, recipe: Recipe, progress: bool) -> tuple[nn.Module, float]:
    """Train ``recipe``'s model; returns it (eval mode) and the seconds it took."""
    start = time.perf_counter()
    steps = sum(int(p["n"]) // recipe.batch_size for p in recipe.phases)
    with torch.random.fork_rng(), torch_threads(1):
        torch.manual_seed(recipe.seed)
        model = _build(recipe)
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=recipe.lr, total_steps=max(steps, 1), pct_start=0.15
        )
        order = torch.Generator().manual_seed(recipe.seed)
        bar = progress_bar(steps, f"training {name}", enabled=progress)
        try:
            model.train()
            for epoch, phase in enumerate(recipe.phases):
                params = dict(phase)
                n = int(params.pop("n"))
                data = _generate(recipe, n, TRAIN_SEED + recipe.seed + epoch, **params)
                x, y = _inputs_labels(data)
                perm = torch.randperm(n, generator=order)
                for i in range(n // recipe.batch_size):
                    idx = perm[i * recipe.batch_size : (i + 1) * recipe.batch_size]
                    loss = _loss(recipe, model(x[idx]), y[idx])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    bar.update(1)
        finally:
            bar.close()
    return model.eval(), time.perf_counter() - start


@torch.no_grad()
def evaluate_model(
    model: nn.Module, data: SyntheticData, *, batch_size: int = 50
) -> dict[str, Any]:
    """Accuracy (classification data) or Dice (segmentation data) of ``model``.

    Classification: ``accuracy`` and ``per_class_accuracy`` (recall per class).
    Segmentation: ``dice``, the mean over foreground classes of each class's Dice
    pooled over all items, and ``per_class_dice`` (NaN for a class absent from both the
    labels and the predictions).
    """
    x, y = _inputs_labels(data)
    was_training = model.training
    model.eval()
    try:
        preds = torch.cat(
            [model(x[i : i + batch_size]).argmax(1) for i in range(0, len(data), batch_size)]
        )
    finally:
        model.train(was_training)
    classes = data.classes
    if isinstance(data, ShapesData):
        per_class = {
            c: float((preds[y == k] == k).float().mean()) if bool((y == k).any()) else None
            for k, c in enumerate(classes)
        }
        return {"accuracy": float((preds == y).float().mean()), "per_class_accuracy": per_class}
    dice: dict[str, float] = {}
    for k, c in enumerate(classes[1:], start=1):
        p, t = preds == k, y == k
        total = int(p.sum() + t.sum())
        dice[c] = 2 * int((p & t).sum()) / total if total else float("nan")
    scores = [v for v in dice.values() if not np.isnan(v)]
    return {"dice": float(np.mean(scores)) if scores else float("nan"), "per_class_dice": dice}


def _load(
    recipe: Recipe, weights: Path, record_path: Path, expected: str
) -> tuple[nn.Module, dict[str, Any]] | None:
    """The cached model and record, or None if absent, stale or unreadable."""
    if not (weights.is_file() and record_path.is_file()):
        return None
    try:
        record = json.loads(record_path.read_text())
        if record.get("recipe_hash") != expected:
            logger.info(
                "Cached %s was made with another recipe (%s, now %s): retraining.",
                weights.name,
                record.get("recipe_hash"),
                expected,
            )
            return None
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model = _build(recipe)
        model.load_state_dict(state)
    except (
        OSError,
        ValueError,
        RuntimeError,
        KeyError,
        AttributeError,
        EOFError,
        pickle.UnpicklingError,
    ) as exc:
        logger.warning("Cannot read the cached %s (%s): retraining.", weights, exc)
        return None
    return model.eval(), record


def _save(model: nn.Module, record: dict[str, Any], weights: Path, record_path: Path) -> bool:
    """Write the weights, then the record (the record marks a complete cache entry)."""
    from esegeta_core.files import atomic_path, write_json

    try:
        with atomic_path(weights) as tmp:
            torch.save(model.state_dict(), tmp)
        write_json(record_path, record)
    except OSError as exc:
        logger.warning(
            "Cannot cache the trained model in %s (%s); it will be trained again next "
            "time. Pass cache_dir= or set ESEGETA_CACHE to a writable folder.",
            weights.parent,
            exc,
        )
        return False
    return True


def pretrained(
    name: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    retrain: bool = False,
) -> TrainedModel:
    """A trained model of the synthetic benchmark, trained on first use and cached.

    Args:
        name: ``"shapes_classifier"`` (:class:`ShapesNet` on :func:`make_shapes`, 64 px),
            ``"shapes_segmenter"`` (:class:`ShapesUNet` on
            :func:`make_shapes_segmentation`, 64 px) or ``"vessel_segmenter"``
            (:class:`VesselUNet` on :func:`make_vessels`, 32^3).
        cache_dir: the folder for ``<name>.pt`` and ``<name>.json``; default
            :func:`default_cache_dir` (``$ESEGETA_CACHE/models`` or
            ``~/.cache/esegeta/models``).
        progress: show a progress bar while training.
        retrain: train even if a cached model with the same recipe exists.

    Returns:
        A :class:`TrainedModel` (model on the CPU, eval mode). Training takes seconds to
        tens of seconds on one CPU thread; loading takes milliseconds.

    Raises:
        PretrainedNotFoundError: ``name`` is not one of :data:`PRETRAINED_NAMES`.
    """
    if name not in _RECIPES:
        raise PretrainedNotFoundError(
            f"No pretrained synthetic model named {name!r}; choose one of "
            f"{', '.join(PRETRAINED_NAMES)}.{did_you_mean(str(name), PRETRAINED_NAMES)}"
        )
    recipe = _RECIPES[name]
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    weights, record_path = folder / f"{name}.pt", folder / f"{name}.json"
    expected = _fingerprint(recipe)
    loaded = None if retrain else _load(recipe, weights, record_path, expected)
    if loaded is not None:
        model, record = loaded
        trained, path = False, weights
    else:
        logger.info("Training the synthetic %s (recipe %s) on the CPU.", name, expected)
        model, seconds = _train(name, recipe, progress)
        with torch_threads(1):
            held_out = _generate(recipe, recipe.eval_n, EVAL_SEED + recipe.seed)
            scores = evaluate_model(model, held_out)
        record = {
            "name": name,
            **scores,
            "eval_n": recipe.eval_n,
            "eval_seed": EVAL_SEED + recipe.seed,
            "training_seconds": round(seconds, 2),
            "threads": 1,
            "recipe_hash": expected,
            "recipe": recipe.as_json(),
            "torch": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        key = "accuracy" if recipe.task == "classification" else "dice"
        logger.info("Trained %s in %.1f s: %s %.3f.", name, seconds, key, record[key])
        if record[key] < recipe.target:
            logger.warning(
                "The synthetic %s reached %s %.3f, below its target %.2f; its "
                "explanations may be poor.",
                name,
                key,
                record[key],
                recipe.target,
            )
        trained = True
        path = weights if _save(model, record, weights, record_path) else None
    return TrainedModel(
        name=name,
        model=model,
        task=recipe.task,
        classes=_CLASSES[recipe.generator],
        cam_layer=str(getattr(model, "cam_layer", "")),
        image_size=recipe.image_size,
        metrics=record,
        trained=trained,
        path=path,
        pointing_tolerance=recipe.pointing_tolerance,
        recipe=recipe,
    )
