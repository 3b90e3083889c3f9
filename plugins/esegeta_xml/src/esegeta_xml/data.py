"""Training data for xML: the core's synthetic shapes, or your own dataset factory.

Items are ``(image, label)`` or ``(image, label, weak_mask)``: images ``(C, *spatial)``
float tensors, labels class indices, weak masks ``(1, *spatial)`` (1 on the object,
e.g. its bounding box) for the hybrid loss.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from esegeta_core.errors import InvalidInputError, InvalidParamsError
from esegeta_xml.config import FactorySource, ShapesSource


class TensorItems(Dataset):
    """Items ``(image, label)`` or ``(image, label, weak_mask)`` from stacked tensors."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None = None
    ) -> None:
        if images.shape[0] != labels.shape[0] or (
            masks is not None and masks.shape[0] != images.shape[0]
        ):
            raise InvalidInputError(
                f"TensorItems: images {tuple(images.shape)}, labels {tuple(labels.shape)} "
                f"and masks {None if masks is None else tuple(masks.shape)} must have the "
                "same first dimension."
            )
        self.images = images.float()
        self.labels = labels.long()
        self.masks = None if masks is None else masks.float()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        if self.masks is None:
            return self.images[index], self.labels[index]
        return self.images[index], self.labels[index], self.masks[index]


def load_callable(spec: str, what: str) -> Callable[..., Any]:
    """Import ``'package.module:function'`` (or ``'path/file.py:function'``)."""
    module_name, _, name = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            loader = importlib.util.spec_from_file_location(path.stem, path)
            if loader is None or loader.loader is None:
                raise ImportError(f"cannot load {path}")
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        return getattr(module, name)
    except (ImportError, AttributeError, FileNotFoundError, ValueError) as exc:
        raise InvalidParamsError(
            f"Cannot import the {what} {spec!r}: {exc}. Use 'package.module:function' "
            "(importable) or 'path/to/file.py:function'."
        ) from exc


def box_masks(masks: torch.Tensor) -> torch.Tensor:
    """The bounding box of each item's mask ``(N, 1, *spatial)``, filled with ones."""
    out = torch.zeros_like(masks, dtype=torch.float32)
    for i, mask in enumerate(masks):
        nonzero = torch.nonzero(mask[0] != 0)
        if nonzero.numel() == 0:
            continue
        lo, hi = nonzero.min(0).values, nonzero.max(0).values + 1
        out[(i, 0, *(slice(int(a), int(b)) for a, b in zip(lo, hi)))] = 1
    return out


def shapes_datasets(spec: ShapesSource) -> tuple[TensorItems, TensorItems]:
    """Training and validation sets of the core's synthetic shapes benchmark."""
    try:
        from esegeta_core.synthetic.shapes import make_shapes
    except ImportError as exc:
        raise InvalidParamsError(
            "data.source 'shapes' needs esegeta_core.synthetic.make_shapes (esegeta-core "
            f"with the synthetic benchmark): {exc}. Update esegeta-core, or use "
            "data.source 'factory' with your own datasets."
        ) from exc

    def part(n: int, seed: int) -> TensorItems:
        data = make_shapes(n, size=spec.size, seed=seed, **spec.kwargs)
        masks = torch.as_tensor(data.masks)
        if masks.ndim == 3:
            masks = masks.unsqueeze(1)
        weak = box_masks(masks) if spec.weak_mask == "boxes" else (masks != 0).float()
        return TensorItems(torch.as_tensor(data.images), torch.as_tensor(data.labels), weak)

    return part(spec.n_train, spec.seed), part(spec.n_val, spec.seed + 1)


def factory_datasets(spec: FactorySource) -> tuple[Dataset, Dataset]:
    """``(train, val)`` from the user's factory."""
    made = load_callable(spec.factory, "dataset factory")(**spec.kwargs)
    if isinstance(made, dict) and {"train", "val"} <= set(made):
        return made["train"], made["val"]
    if isinstance(made, (tuple, list)) and len(made) == 2:
        return made[0], made[1]
    raise InvalidParamsError(
        f"The dataset factory {spec.factory!r} returned {type(made).__name__}; it must "
        "return (train, val) or {'train': ..., 'val': ...} (torch Datasets)."
    )


def build_datasets(spec: ShapesSource | FactorySource) -> tuple[Dataset, Dataset]:
    """The ``(train, val)`` datasets a training config names."""
    if isinstance(spec, ShapesSource):
        return shapes_datasets(spec)
    return factory_datasets(spec)


def split_batch(
    batch: Any, who: str = "xML training"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(images, labels, weak masks or None)`` from a collated batch."""
    if isinstance(batch, dict):
        items = (batch.get("image"), batch.get("label"), batch.get("mask"))
    elif isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        items = (batch[0], batch[1], batch[2] if len(batch) == 3 else None)
    else:
        items = (None, None, None)
    images, labels, masks = items
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise InvalidInputError(
            f"{who}: dataset items must be (image, label) or (image, label, weak_mask) "
            "tensors (or dicts with 'image', 'label', 'mask'); got "
            f"{type(batch).__name__}."
        )
    return images.float(), labels.long().reshape(-1), masks
