"""The training configuration of ``esegeta xml train CONFIG`` (YAML or JSON).

Every field is described, so ``esegeta xml schema`` prints the whole JSON Schema. The
defaults follow the paper's training command (https://doi.org/10.1016/j.patrec.2020.04.004,
repository icrto/xML): phases of 10, 10 and 60 epochs; alpha 1.0, 0.25, 0.9; classifier
learning rates 0.01, 0, 0.01; explainer learning rates 0, 0.01, 0.01; early-stopping
patience 100, 100, 10; SGD; beta 0.9; gamma 1.0; init_bias 3.0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from esegeta_core.errors import InvalidParamsError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_factory(value: str) -> str:
    if ":" not in value:
        raise ValueError("must look like 'package.module:function'")
    return value


class ShapesSource(_Section):
    """The core's synthetic 2D shapes benchmark (``esegeta_core.synthetic.make_shapes``)."""

    source: Literal["shapes"] = Field("shapes", description="The synthetic shapes data set.")
    n_train: int = Field(512, ge=2, description="Training images.")
    n_val: int = Field(128, ge=1, description="Validation images (early stopping).")
    size: int = Field(64, ge=8, description="Image side in pixels.")
    seed: int = Field(0, description="Seed of the training images (validation: seed + 1).")
    weak_mask: Literal["boxes", "masks"] = Field(
        "boxes",
        description="Weak masks for the hybrid loss: the objects' bounding boxes (as in "
        "the paper) or their exact masks.",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="More keyword arguments for make_shapes."
    )


class FactorySource(_Section):
    """Your own data: a function returning the training and validation datasets."""

    source: Literal["factory"] = Field("factory", description="A dataset factory.")
    factory: str = Field(
        description="'package.module:function' returning (train, val) or "
        "{'train': ..., 'val': ...}: torch Datasets whose items are (image, label) or "
        "(image, label, weak_mask); images (C, *spatial) float tensors."
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments.")

    @field_validator("factory")
    @classmethod
    def _factory_path(cls, value: str) -> str:
        return _check_factory(value)


DataSpec = Annotated[ShapesSource | FactorySource, Field(discriminator="source")]


class ModelSpec(_Section):
    """The classifier (any factory) and the explainer joined to it."""

    classifier: str = Field(
        "esegeta_xml.classifiers:small_vgg",
        description="'package.module:function' building the classifier, e.g. "
        "'torchvision.models:resnet18' (kwargs {weights: null, num_classes: 2}).",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the classifier factory."
    )
    in_channels: int = Field(3, ge=1, description="Input channels.")
    spatial_dims: Literal[2, 3] = Field(2, description="2 for images, 3 for volumes.")
    multiply_after: list[str] | None = Field(
        None,
        description="Module paths of the classifier whose outputs the explanation "
        "multiplies; null = found by the adapter.",
    )
    adapter: Literal["auto", "resnet", "vgg"] = Field(
        "auto", description="Adapter naming the multiplication points (multiply_after null)."
    )
    widths: list[int] = Field(
        [32, 64, 128], min_length=1, description="Explainer U-Net channels per level."
    )
    init_bias: float = Field(
        3.0, description="Initial bias of the explainer head's BatchNorm (2 to 10)."
    )

    @field_validator("classifier")
    @classmethod
    def _classifier_path(cls, value: str) -> str:
        return _check_factory(value)


class LossSpec(_Section):
    """The explanation loss: unsupervised, or hybrid with weak masks."""

    kind: Literal["unsupervised", "hybrid"] = Field(
        "unsupervised", description="'hybrid' adds the weak-mask term (needs masks)."
    )
    beta: float = Field(0.9, ge=0, le=1, description="Sparsity weight; 1 - beta weighs TV.")
    gamma: float = Field(1.0, ge=0, description="Weight of the weak-mask term (hybrid).")


class PhaseSpec(_Section):
    """One training phase. A module trains in a phase when its learning rate is > 0;
    a frozen module is also put in eval mode (its BatchNorm statistics stay fixed)."""

    epochs: int = Field(ge=0, description="Maximum epochs (0 skips the phase).")
    alpha: float = Field(
        ge=0, le=1, description="Loss = alpha * cross-entropy + (1 - alpha) * explanation."
    )
    lr_classifier: float = Field(ge=0, description="Classifier learning rate (0 = frozen).")
    lr_explainer: float = Field(ge=0, description="Explainer learning rate (0 = frozen).")
    patience: int | None = Field(
        None, ge=1, description="Stop after this many epochs without a lower validation loss."
    )

    @model_validator(mode="after")
    def _trains_something(self) -> PhaseSpec:
        if self.epochs > 0 and self.lr_classifier == 0 and self.lr_explainer == 0:
            raise ValueError("both learning rates are 0: nothing would train (set epochs: 0)")
        return self


PHASE_NAMES = ("classifier", "explainer", "both")
"""The three phases, in order: (0) classifier only, (1) explainer only, (2) both."""

PHASE_DEFAULTS: dict[str, dict[str, Any]] = {
    "classifier": {
        "epochs": 10,
        "alpha": 1.0,
        "lr_classifier": 0.01,
        "lr_explainer": 0.0,
        "patience": 100,
    },
    "explainer": {
        "epochs": 10,
        "alpha": 0.25,
        "lr_classifier": 0.0,
        "lr_explainer": 0.01,
        "patience": 100,
    },
    "both": {
        "epochs": 60,
        "alpha": 0.9,
        "lr_classifier": 0.01,
        "lr_explainer": 0.01,
        "patience": 10,
    },
}


class Phases(_Section):
    """The three phases; a field left out keeps that phase's default."""

    classifier: PhaseSpec = Field(description="Phase 0: the classifier alone.")
    explainer: PhaseSpec = Field(description="Phase 1: the explainer alone.")
    both: PhaseSpec = Field(description="Phase 2: both together.")

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name in PHASE_NAMES:
            given = out.get(name) or {}
            if isinstance(given, dict):
                out[name] = {**PHASE_DEFAULTS[name], **given}
        return out

    def ordered(self) -> list[tuple[str, PhaseSpec]]:
        """``[(name, spec), ...]`` in training order."""
        return [(name, getattr(self, name)) for name in PHASE_NAMES]


class TrainConfig(_Section):
    """A whole xML training run: data, model, loss, the three phases, the runtime."""

    output_dir: Path = Field(
        Path("xml-out"), description="Folder for checkpoints, metrics and the final model."
    )
    data: DataSpec = Field(description="Where the images come from.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="Classifier + explainer.")
    loss: LossSpec = Field(default_factory=LossSpec, description="The explanation loss.")
    phases: Phases = Field(default_factory=lambda: Phases(), description="The three phases.")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="Optimiser of every phase.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay.")
    batch_size: int = Field(16, ge=1, description="Mini-batch size.")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    device: str = Field("auto", description="'auto' (CUDA if available), 'cpu', 'cuda:0', ...")
    seed: int = Field(0, description="Seed of the weights' initialisation and the shuffling.")
    restore_best: bool = Field(
        True, description="End each phase with its weights of lowest validation loss."
    )
    progress: bool = Field(True, description="Show progress bars.")


def parse_train_config(data: Any, where: str = "config") -> TrainConfig:
    """Validate a mapping (or a :class:`TrainConfig`); errors list every problem."""
    if isinstance(data, TrainConfig):
        return data
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        problems = "\n".join(
            f"  {'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidParamsError(
            f"xML training {where} is invalid:\n{problems}\n"
            "See `esegeta xml schema` for every field."
        ) from exc


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a YAML (``.yaml``/``.yml``) or JSON training config and validate it.

    A relative ``output_dir`` is taken relative to the config file's folder.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise InvalidParamsError(f"Cannot read the xML training config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidParamsError(f"xML training config {path}: the top level must be a mapping.")
    config = parse_train_config(data, where=f"config {path}")
    if not config.output_dir.is_absolute():
        config = config.model_copy(update={"output_dir": path.resolve().parent / config.output_dir})
    return config


def train_config_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`TrainConfig`."""
    return TrainConfig.model_json_schema()
