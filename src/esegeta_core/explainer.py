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
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, Literal, TypeVar, get_args

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

if TYPE_CHECKING:
    from esegeta_core.tracing import ModelTrace

Family = Literal["gradient", "perturbation", "layer", "neuron", "cam", "visualization", "in_model"]
"""How a method works; metrics and reports group methods by it. ``in_model``: the map
comes from a part of the model trained to explain it (an explainer network trained
jointly with the classifier)."""

RESERVED = frozenset(
    {"target", "task", "wrapper", "output", "seed", "amp", "patches", "auto_batch"}
    | {"progress", "force", "reshape"}
)
"""Keyword arguments of :func:`esegeta_core.explain` itself; no method parameter may use
these names (the plugin manager refuses a method that does)."""

Output = Literal["input", "layer", "image"]
"""What ``attribute`` returns: a map shaped like the input, a map at a layer's
resolution, or synthesised images (feature visualisation) that are not attributions."""

Cost = Literal["low", "medium", "high"]
"""Rough cost: low ~ a few passes, medium ~ tens, high ~ hundreds or more."""

ModelRules = Literal["none", "gates", "relevance"]
"""Whether a method attaches rules to the model's modules, and which: ``"gates"``
(guided backprop, deconvnet, DeepLift, excitation backprop act on activations) or
``"relevance"`` (LRP: relevance conserved through every operation). The core then runs
the method on a prepared model (:mod:`esegeta_core.preparation`)."""


class LayerRef:
    """Marks a ``str`` parameter as a layer path of the user's model.

    The core resolves such fields before running a method, so a typo is reported with
    near names before any work is done, and the conformance suite can fill them in.
    ``reads_map``: the method reads (or replaces) the layer's output as a map, so the
    core resolves ``"auto"``, infers the output's layout (tokens, channels-last) and
    taps it; False for a module the method only uses otherwise (a classifier's weights).
    """

    def __init__(self, reads_map: bool = True) -> None:
        self.reads_map = reads_map

    def __repr__(self) -> str:
        return f"LayerRef(reads_map={self.reads_map})"


LayerPath = Annotated[str, LayerRef()]
"""A dotted path to a sub-module of the user's model, such as ``"layer4.1.conv2"``,
whose output the method reads as a map (``"auto"``: chosen by the core)."""

ModulePath = Annotated[str, LayerRef(reads_map=False)]
"""A dotted path to a sub-module the method uses otherwise than by reading its output
as a map (a classifier layer whose weights it uses, a layer it probes as a vector)."""


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

    field_aliases: ClassVar[dict[str, str]] = {}
    """Other names accepted for fields, ``{alias: field}`` (for example Captum's own
    parameter names); every class in the hierarchy may add some. Giving a field under
    two names is an error; the schema lists the aliases of each field."""

    @classmethod
    def all_aliases(cls) -> dict[str, str]:
        """``{alias: field}`` over the whole class hierarchy."""
        merged: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            merged.update(klass.__dict__.get("field_aliases", {}))
        fields = cls.model_fields
        return {a: f for a, f in merged.items() if f in fields and a not in fields}

    @model_validator(mode="before")
    @classmethod
    def _accept_aliases(cls, data: Any) -> Any:
        aliases = cls.all_aliases()
        if not aliases or not isinstance(data, dict):
            return data
        data = dict(data)
        for alias, name in aliases.items():
            if alias in data:
                if name in data:
                    raise ValueError(f"{alias!r} is another name for {name!r}; give only one")
                data[name] = data.pop(alias)
        return data

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """The JSON Schema; tensor-valued options are described, not rejected, and each
        field lists its ``aliases``."""
        kwargs.setdefault("schema_generator", TensorAwareSchema)
        schema = super().model_json_schema(*args, **kwargs)
        props = schema.get("properties", {})
        for alias, name in cls.all_aliases().items():
            if name in props:
                props[name].setdefault("aliases", []).append(alias)
        return schema

    @classmethod
    def layer_fields(cls, *, maps_only: bool = False) -> list[str]:
        """Names of the fields annotated as :data:`LayerPath` or :data:`ModulePath` (or
        lists of them); ``maps_only``: only those whose output is read as a map."""
        names = []
        for name, field in cls.model_fields.items():
            metas = list(field.metadata)
            args = getattr(field.annotation, "__args__", ()) or ()
            for arg in args:
                metas.extend(getattr(arg, "__metadata__", ()))
                for inner in getattr(arg, "__args__", ()) or ():
                    metas.extend(getattr(inner, "__metadata__", ()))
            refs = [m for m in metas if isinstance(m, LayerRef)]
            if refs and (not maps_only or any(r.reads_map for r in refs)):
                names.append(name)
        return names

    def only_with(self, fields: Iterable[str], enabled: bool, needs: str) -> None:
        """Refuse ``fields`` the user set when they do not apply (``enabled`` False):
        an option that would be silently ignored is an error naming what it ``needs``.
        Call it from a ``model_validator(mode="after")``."""
        unused = sorted(f for f in fields if f in self.model_fields_set)
        if unused and not enabled:
            many = len(unused) > 1
            raise ValueError(
                f"{', '.join(unused)} only appl{'y' if many else 'ies'} with {needs}; "
                f"remove {'them' if many else 'it'}"
            )

    def public_dict(self) -> dict[str, Any]:
        """The parameters as plain data (tensors summarised), for records and reports."""
        out: dict[str, Any] = {}
        for key, value in self.model_dump().items():
            if isinstance(value, torch.Tensor):
                value = f"tensor{tuple(value.shape)}"
            out[key] = value
        return out


@dataclass(frozen=True)
class Workload:
    """What one call of a method will run and hold, estimated before it runs, so the core
    can refuse a call that would run for days or not fit in memory
    (:func:`esegeta_core.checks.check_cost`). Every estimate must be cheap: arithmetic on
    the parameters and shapes, never a pass at the requested size."""

    passes: int | None = None
    """Forward-pass equivalents per item (None: a few, or unknown)."""
    inputs: int | None = None
    """Inputs that go through the model together at the peak, for the whole call (the
    batch times the copies the method makes of each item: path points, noisy copies,
    perturbations); None: no more than the call's own batch."""
    extra: int = 0
    """Bytes the method holds at its peak besides the model's activations (quadrature
    tables, sample matrices, masks, perturbation pyramids)."""
    counts: tuple[str, ...] = ()
    """The parameters that set these numbers, named with their values in a refusal."""
    fix: str = ""
    """What to change to ask for less, in words ("" : lower the ``counts``)."""
    batch: tuple[str, ...] = ()
    """Parameters that bound ``inputs`` when set (offered in a memory refusal)."""


P = TypeVar("P", bound=MethodParams)
"""A method's parameter model."""


class Explainer(ABC, Generic[P]):
    """Base class of every method: subclass it as ``Explainer[MyParams]``, set the class
    attributes, implement :meth:`attribute`.

    The type argument is the method's :class:`MethodParams` subclass: it types the
    ``params`` every hook receives and sets ``Params`` (a class that also sets ``Params``
    must name the same model or a subclass of it).

    Capability attributes (class level, read without running anything):

    - ``name``: globally unique dotted name, ``"<plugin>.<method>"``.
    - ``Params``: the :class:`MethodParams` subclass of the method (from the type
      argument).
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
      Those that change a random draw (:meth:`drawn_with`) are left as they are.
    - ``pass_params``: those of ``batch_params`` whose passes run without gradients
      (perturbations, masks); under ``explain(auto_batch=True)`` they get every input
      that fits in memory at once, and the core's pass planner
      (:class:`~esegeta_core.runtime.passes.PassSplitter`) runs each such pass as the
      fastest forward passes, found on the method's own first passes.
    - ``pass_unit``: what one unit of the ``pass_params`` counts: whole inputs in one
      forward pass (``"pass"``), or copies of each batch item (``"item"``, Captum's
      ``perturbations_per_eval``); left at its default on the CPU, a pass then holds
      at most :data:`~esegeta_core.runtime.pass_defaults.CPU_PASS_ELEMENTS` input
      elements (big images and volumes run faster in smaller passes there). ``""``
      (the default): the passes do not take whole inputs (they start at a layer); the
      default stands.
    - ``own_passes``: the method builds its ``pass_params`` passes itself and runs them
      through :func:`~esegeta_core.runtime.passes.method_passes` (layer replay, masks
      made per pass): under ``explain(auto_batch=True)`` the core plans those calls
      instead of splitting the batches the model receives (so methods reading a layer
      can be planned too).
    - ``count_params``: parameters whose product is the number of passes per item
      (steps, samples, masks); huge requests are refused with an estimate unless
      ``force=True`` (override :meth:`passes` when the count is more involved, and
      :meth:`workload` when the method also holds many inputs or buffers at once).
    - ``model_rules``: see :data:`ModelRules`.
    - ``forward_only``: the method runs the model forward only, without gradients,
      and reads nothing inside it but through the core's layer taps (which hand on
      copies): the core then leaves in-place activations as they are (turning them off
      copies every activation, ~5% of each forward pass of a ResNet-50). Leave it
      False when any path hooks a layer without a tap (Captum's neuron methods).
    - ``needs_trace``: the core records what the model computes in one probe pass
      (:func:`esegeta_core.tracing.trace_model`) and hands it to :meth:`check_model`,
      without preparing the model (rule-based methods always get it).
    - ``requirements``: what the model must have for the method to apply, in words
      (shown by ``esegeta methods NAME``); :meth:`check_model` raises
      :class:`~esegeta_core.NotApplicableError` citing one when it is missing.
    - ``tasks``: the model tasks the method explains (``explain(task=...)``); another
      is refused before the model runs, naming the methods that explain it (TorchRay's
      ``rise`` squashes every score with a sigmoid, which a segmentation's summed class
      scores saturate).
    - ``min_batch``: the fewest items a call needs (permutation importance shuffles a
      feature across the batch: one item gives an all-zero map); a smaller batch is
      refused before the model runs.
    - ``cost_note``: how the cost grows with the model or the parameters, in words.
    - ``layout_param``: for methods that read tokens without a layer parameter
      (attention maps), the parameter that takes the token layout as ``"EXTRA:GRID"``;
      ``explain(reshape="tokens:EXTRA:GRID")`` fills it. Methods with neither a layer
      whose output is read as a map nor this refuse a ``reshape=``.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[MethodParams]] = MethodParams
    family: ClassVar[Family] = "gradient"
    output: ClassVar[Output] = "input"
    ranks: ClassVar[tuple[int, ...]] = (2, 3)
    tasks: ClassVar[tuple[str, ...]] = ("classification", "segmentation")
    min_batch: ClassVar[int] = 1
    needs_layer: ClassVar[bool] = False
    cost: ClassVar[Cost] = "low"
    paper: ClassVar[str] = ""
    deterministic: ClassVar[bool] = True
    batch_params: ClassVar[tuple[str, ...]] = ()
    pass_params: ClassVar[tuple[str, ...]] = ()
    pass_unit: ClassVar[Literal["", "pass", "item"]] = ""
    own_passes: ClassVar[bool] = False
    count_params: ClassVar[tuple[str, ...]] = ()
    model_rules: ClassVar[ModelRules] = "none"
    needs_trace: ClassVar[bool] = False
    forward_only: ClassVar[bool] = False
    requirements: ClassVar[tuple[str, ...]] = ()
    cost_note: ClassVar[str] = ""
    layout_param: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        typed = _params_argument(cls)
        if typed is None:
            return
        own = cls.__dict__.get("Params")
        if own is None:
            cls.Params = typed
        elif not (isinstance(own, type) and issubclass(own, typed)):
            raise TypeError(
                f"{cls.__qualname__}: Params is {own!r} but the class is declared "
                f"Explainer[{typed.__qualname__}]; give one parameter model"
            )

    def prediction_pass(
        self, model: torch.nn.Module, inputs: torch.Tensor, params: P
    ) -> torch.Tensor | None:
        """Optionally run the core's prediction pass (``target=None``, no gradients, no
        mixed precision) as the method's own first pass: return ``model(inputs)``'s
        ``(B, classes)`` scores, keeping what the method reads from that pass (layer
        activations, a record for layer replay) for its :meth:`attribute` call on the
        same ``inputs``. A method whose first step is such a plain pass then runs the
        network once less per call (a whole pass of a 3D DenseNet at 48^3: 67 ms on
        2 CPU threads). The default returns None: the core runs the pass itself."""
        return None

    def check_model(self, model: torch.nn.Module, params: P, trace: ModelTrace | None) -> None:
        """Refuse before running if the method cannot apply to ``model``.

        Called by the core after validation and model preparation; ``trace`` is the
        probe's record for rule-based methods (None otherwise). Raise
        :class:`~esegeta_core.NotApplicableError` for a missing requirement, or another
        esegeta error naming the problem and the fix. The default accepts every model.
        """
        return None

    def passes(self, params: P, shape: tuple[int, ...]) -> int | None:
        """Forward-pass equivalents per item for ``params`` on inputs of ``shape``
        (None: small or unknown). The default multiplies the ``count_params``."""
        values: list[Any] = [getattr(params, n, None) for n in self.count_params]
        counts = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        return math.prod(counts) if counts else None

    def drawn_with(self, params: P) -> tuple[str, ...]:
        """The ``batch_params`` whose value changes what the method draws at random for
        ``params`` (a method that draws its samples chunk by chunk, a batch at a time, as
        TorchRay's ``rise`` does; ``torchray.rise`` draws TorchRay's chunks whatever
        its passes, so its pass size is not one): ``explain(auto_batch=True)`` leaves
        them as they are, so the map does not change with it, and a CUDA out-of-memory
        retry that halves one says the map was drawn differently. The default: none
        (the draws do not depend on how the work is batched)."""
        return ()

    def workload(
        self, params: P, shape: tuple[int, ...], layers: Mapping[str, tuple[int, ...]]
    ) -> Workload:
        """What one call on inputs of ``shape`` (``(B, C, *spatial)``) runs and holds;
        ``layers``: the output shape (without batch, channels first) of each layer the
        parameters name, measured by one probe pass the first time it is read. The
        default reports :meth:`passes` and no memory beyond the batch; override it when
        the method expands the batch (steps, samples, copies) or builds large buffers."""
        counts = tuple(n for n in self.count_params if isinstance(getattr(params, n, None), int))
        return Workload(passes=self.passes(params, shape), counts=counts)

    @abstractmethod
    def attribute(
        self,
        model: torch.nn.Module,
        inputs: torch.Tensor,
        target: torch.Tensor,
        params: P,
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


def _params_argument(cls: type) -> type[MethodParams] | None:
    """The parameter model ``cls`` was declared with (``class M(Explainer[MyParams])``
    or a generic base's ``[MyParams]``), None when it names none (a type variable)."""
    for base in getattr(cls, "__orig_bases__", ()):
        for arg in get_args(base):
            if isinstance(arg, type) and issubclass(arg, MethodParams):
                return arg
    return None


class MethodResult:
    """What ``attribute`` returns when it has more to say than one tensor: the
    attributions plus named ``extras`` (for example segment masks). An extra named
    ``warnings`` (a list of strings: what the method knows is wrong with the map and
    why) joins the call's map warnings, logged once each; a patch's own are dropped,
    since the stitched map is checked as a whole."""

    def __init__(self, attributions: torch.Tensor, **extras: Any) -> None:
        self.attributions = attributions
        self.extras = extras
