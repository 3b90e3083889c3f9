"""The plugin contract: :class:`Explainer` and its parameter model :class:`MethodParams`.

A method is a class with a dotted ``name`` (``"<plugin>.<method>"``), a pydantic
``Params`` model and capability attributes the core reads without running anything.
The core hands :meth:`Explainer.attribute` a model that returns ``B x classes`` scores,
an input batch on the model's device and a ``(B,)`` long tensor of target classes; the
method returns a tensor. Patches, devices, segmentation wrappers and state restoration
are the core's job, so a typical method is a handful of lines.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

Family = Literal["gradient", "perturbation", "layer", "neuron", "cam", "visualization", "in_model"]
"""How a method works; metrics and reports group methods by it. ``in_model``: the map
comes from a part of the model trained to explain it (seed 004's explainer)."""

Output = Literal["input", "layer", "image"]
"""What ``attribute`` returns: a map shaped like the input, a map at a layer's
resolution, or synthesised images (feature visualisation) that are not attributions."""

Cost = Literal["low", "medium", "high"]
"""Rough cost: low ~ a few passes, medium ~ tens, high ~ hundreds or more."""


class LayerRef:
    """Marks a ``str`` parameter as a layer path of the user's model.

    The core resolves such fields before running a method, so a typo is reported with
    near names before any work is done, and the conformance suite can fill them in.
    """

    def __repr__(self) -> str:
        return "LayerRef()"


LayerPath = Annotated[str, LayerRef()]
"""A dotted path to a sub-module of the user's model, such as ``"layer4.1.conv2"``."""


class TensorAwareSchema(GenerateJsonSchema):
    """JSON Schema generation that describes Python-only values (tensors) instead of
    failing: they appear as ``{"type": "object", "x-python-type": "torch.Tensor"}``."""

    def is_instance_schema(self, schema: core_schema.IsInstanceSchema) -> JsonSchemaValue:
        cls = schema["cls"]
        name = f"{cls.__module__}.{cls.__qualname__}"
        return {"type": "object", "title": cls.__name__, "x-python-type": name}


class MethodParams(BaseModel):
    """Base class of every method's parameter model.

    Unknown fields are errors (a typo never becomes a silent default) and every field
    must carry a ``description``: the JSON Schema is the documentation users read in
    ``esegeta methods NAME``. Tensors are allowed as values (baselines, masks).
    """

    model_config = ConfigDict(
        extra="forbid",
        arbitrary_types_allowed=True,
        validate_default=True,
        frozen=True,
    )

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """The JSON Schema; tensor-valued options are described, not rejected."""
        kwargs.setdefault("schema_generator", TensorAwareSchema)
        return super().model_json_schema(*args, **kwargs)

    @classmethod
    def layer_fields(cls) -> list[str]:
        """Names of the fields annotated as :data:`LayerPath` (or lists of them)."""
        names = []
        for name, field in cls.model_fields.items():
            metas = list(field.metadata)
            args = getattr(field.annotation, "__args__", ()) or ()
            for arg in args:
                metas.extend(getattr(arg, "__metadata__", ()))
            if any(isinstance(m, LayerRef) for m in metas):
                names.append(name)
        return names

    def public_dict(self) -> dict[str, Any]:
        """The parameters as plain data (tensors summarised), for records and reports."""
        out: dict[str, Any] = {}
        for key, value in self.model_dump().items():
            if isinstance(value, torch.Tensor):
                value = f"tensor{tuple(value.shape)}"
            out[key] = value
        return out


class Explainer(ABC):
    """Base class of every method: subclass it, set the class attributes, implement
    :meth:`attribute`.

    Capability attributes (class level, read without running anything):

    - ``name``: globally unique dotted name, ``"<plugin>.<method>"``.
    - ``Params``: the :class:`MethodParams` subclass of the method.
    - ``family``: see :data:`Family`.
    - ``output``: see :data:`Output`.
    - ``ranks``: spatial ranks supported: ``(2,)`` for images only, ``(2, 3)`` for both.
    - ``needs_layer``: whether the method explains or looks at an internal layer.
    - ``cost``: see :data:`Cost`.
    - ``paper``: link to the paper that defines the method.
    - ``deterministic``: False when results vary with the random seed.
    - ``batch_params``: names of the parameters that batch internal work (perturbations,
      steps, samples, masks, channels); ``explain(auto_batch=True)`` sizes them and a
      CUDA out-of-memory error halves them and retries.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[MethodParams]] = MethodParams
    family: ClassVar[Family] = "gradient"
    output: ClassVar[Output] = "input"
    ranks: ClassVar[tuple[int, ...]] = (2, 3)
    needs_layer: ClassVar[bool] = False
    cost: ClassVar[Cost] = "low"
    paper: ClassVar[str] = ""
    deterministic: ClassVar[bool] = True
    batch_params: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def attribute(
        self,
        model: torch.nn.Module,
        inputs: torch.Tensor,
        target: torch.Tensor,
        params: Any,
    ) -> torch.Tensor | MethodResult:
        """Explain ``model``'s score for ``target`` (shape ``(B,)``) on ``inputs``.

        ``model`` returns ``B x classes``; it may be a wrapper around the user's model
        (segmentation); resolve layer names with :func:`esegeta_core.resolve_layer`,
        which looks inside wrappers. Return a tensor as described by ``output``, or a
        :class:`MethodResult` to add extras.
        """

    @classmethod
    def description(cls) -> str:
        """The docstring's first paragraph, on one line (a summary may wrap)."""
        doc = (inspect.getdoc(cls) or "").strip()
        return " ".join(doc.split("\n\n")[0].split()) if doc else ""


class MethodResult:
    """What ``attribute`` returns when it has more to say than one tensor: the
    attributions plus named ``extras`` (for example segment masks)."""

    def __init__(self, attributions: torch.Tensor, **extras: Any) -> None:
        self.attributions = attributions
        self.extras = extras
