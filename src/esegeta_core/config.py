"""The run configuration: one YAML or JSON file drives ``esegeta run``.

Every section is a pydantic model with described fields, so ``esegeta schema`` prints
the full JSON Schema and ``esegeta validate`` checks a file without running anything.
A run explains every input with every method for every target (the jobs), on the
devices and with the runtime features the file asks for, and writes one folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from esegeta_core.errors import InvalidParamsError
from esegeta_core.runtime.patches import PatchSpec


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Section):
    """How to build the model: a factory function and an optional checkpoint."""

    factory: str = Field(
        description="'package.module:function' returning a torch.nn.Module "
        "(a module file path also works: 'path/to/file.py:function')."
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments.")
    checkpoint: Path | None = Field(
        None, description="State dict loaded with torch.load(weights_only=True)."
    )
    checkpoint_key: str | None = Field(
        None, description="Key of the state dict inside the checkpoint (e.g. 'state_dict')."
    )
    strict: bool = Field(True, description="Require checkpoint keys to match exactly.")
    output: str | int | None = Field(
        None,
        description="Which part of what the model returns holds the logits: a dict key or "
        "attribute name, or a tuple index; null reads a tensor, a dict's 'logits' or 'out', "
        "a tuple's first element or an object's .logits.",
    )

    @field_validator("factory")
    @classmethod
    def _has_colon(cls, value: str) -> str:
        if ":" not in value:
            raise ValueError("factory must look like 'package.module:function'")
        return value


class Normalise(_Section):
    """Per-channel normalisation applied after loading: (x - mean) / std."""

    mean: list[float] = Field(description="Per-channel means (one value = every channel).")
    std: list[float] = Field(description="Per-channel standard deviations.")


class InputSpec(_Section):
    """Which files to explain and how to read them into (B, C, *spatial) tensors."""

    paths: list[str] = Field(
        description="Files or glob patterns: NIfTI (.nii, .nii.gz), PNG/JPEG, .npy, .pt."
    )
    rank: Literal[2, 3] = Field(2, description="Spatial dimensions of the data: 2 or 3.")
    depth_first: bool = Field(
        True,
        description="3D arrays are stored depth first (D, H, W). False: (H, W, D), re-ordered "
        "on load and back on save. NIfTI volumes are read as (X, Y, Z) and re-ordered to "
        "(Z, Y, X) when depth_first is true.",
    )
    batch_dim: bool = Field(
        False, description="Arrays (.npy, .pt) already have a leading batch dimension."
    )
    channel_dim: bool = Field(
        True, description="Arrays have a channel dimension (first, after any batch)."
    )
    channels: int | None = Field(
        None, ge=1, description="Convert images to this many channels (1 grey, 3 RGB)."
    )
    scale: Literal["none", "unit", "minmax", "zscore"] = Field(
        "unit",
        description="Intensity scaling: 'unit' divides 8-bit images by 255 (other data "
        "untouched), 'minmax' maps to [0, 1], 'zscore' standardises, 'none' keeps values.",
    )
    normalise: Normalise | None = Field(None, description="Optional (x - mean) / std.")
    resize: list[int] | None = Field(
        None, description="Resize the spatial dimensions to this size (linear interpolation)."
    )


class RegionSpec(_Section):
    """A segmentation target restricted to a region: a class inside a mask file."""

    label: int = Field(ge=0, description="The class to explain.")
    mask: str = Field(description="Mask file (same formats as inputs), nonzero = inside.")


class MethodSpec(_Section):
    """One method with its parameters."""

    method: str = Field(description="Method name, e.g. 'captum.integrated_gradients'.")
    params: dict[str, Any] = Field(default_factory=dict, description="Its parameters.")
    title: str | None = Field(None, description="Title in figures (default: the name).")
    patches: bool = Field(True, description="Use the run's patches for this method.")
    sign: Literal["all", "positive", "absolute"] = Field(
        "all", description="What figures show: signed map, positive part, or magnitude."
    )
    force: bool = Field(
        False,
        description="Run even when the requested counts (steps, samples, masks) are "
        "estimated at more than 200,000 forward passes.",
    )


class WrapperSpec(_Section):
    """The segmentation wrapper turning outputs into per-class scores."""

    name: Literal["multi_class", "threshold"] = Field(
        "multi_class", description="multi_class (argmax regions) or threshold (sigmoid)."
    )
    threshold: float | Literal["otsu"] = Field(
        0.5, description="Probability threshold for 'threshold', or 'otsu'."
    )
    logits: bool = Field(True, description="The one-channel output is a logit (not a prob).")


class OutputSpec(_Section):
    """What to write for every job."""

    attributions: bool = Field(True, description="Write maps (NIfTI for 3D, .npz for 2D).")
    figures: bool = Field(True, description="Write a PNG figure per job and per input.")
    colorbar: bool = Field(True, description="Colour bars in figures.")
    report: bool = Field(
        True, description="Write report.html, a self-contained HTML report, at the end."
    )


class EvaluationSpec(_Section):
    """Which metrics score the run's methods, with what settings and ground truth."""

    metrics: list[str] | None = Field(
        None,
        description="Metric names (see `esegeta_core.evaluation.METRICS`); null: every "
        "metric that applies (localisation metrics only with masks).",
    )
    metric_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per metric, keyword arguments overriding the preset, e.g. {aopc: {grid: 16}}.",
    )
    preset: Literal["esegeta", "torchesegeta"] = Field(
        "esegeta", description="Metric settings: esegeta's or the original TorchEsegeta's."
    )
    masks: list[str] | None = Field(
        None,
        description="Ground-truth object masks (or label maps for segmentation), one file "
        "per input file in the order of inputs.paths (globs expanded the same way).",
    )
    model_name: str = Field("model", description="The run's model's name in the leaderboard.")
    models: dict[str, Any] = Field(
        default_factory=dict,
        description="More models to compare, by name: each a model section "
        "({factory, kwargs, checkpoint, ...}).",
    )

    @field_validator("metrics")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        from esegeta_core.metric_info import METRICS

        if value is not None:
            unknown = [m for m in value if m not in METRICS]
            if unknown:
                raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
        return value

    @field_validator("metric_params")
    @classmethod
    def _known_params(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from esegeta_core.metric_info import METRICS

        unknown = [m for m in value if m not in METRICS]
        if unknown:
            raise ValueError(f"metric_params for unknown metric(s) {unknown}")
        return value


class ExecutorSpec(_Section):
    """Where the jobs are computed: the local process scheduler or a plugin's executor."""

    name: str = Field(
        "local",
        description="'local' (worker processes on this machine) or an executor a plugin "
        "provides, e.g. 'ray' (esegeta-ray); `esegeta executors` lists them.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="The executor's options (e.g. address for ray), checked against the "
        "options it declares.",
    )


class RunConfig(_Section):
    """A whole run: model, inputs, targets, methods, devices and runtime features."""

    name: str = Field(
        "run",
        description="Run name: the run folder is output_dir/name, so one folder name "
        "(no '/' or '\\', not '.' or '..').",
    )
    output_dir: Path = Field(Path("esegeta-out"), description="Where run folders go.")
    model: ModelSpec = Field(description="The model to explain.")
    inputs: InputSpec = Field(description="The inputs to explain.")
    task: Literal["classification", "segmentation"] = Field(
        "classification", description="Classification, or segmentation with a wrapper."
    )
    wrapper: WrapperSpec = Field(
        default_factory=WrapperSpec, description="Segmentation wrapper (task=segmentation)."
    )
    targets: list[int | RegionSpec] | None = Field(
        None, description="Classes to explain (each a job); null = each input's prediction."
    )
    methods: list[MethodSpec] = Field(min_length=1, description="Methods to run.")
    devices: Literal["auto"] | list[str] = Field(
        "auto",
        description="'auto' (every GPU, else CPU) or a list of 'cpu', 'cuda', 'cuda:N' "
        "(GPU number N) and 'mps', like ['cuda:0', 'cpu'].",
    )
    cpu_workers: int = Field(
        1, ge=0, description="CPU worker processes when running on the CPU (0 = in-process)."
    )
    jobs_per_gpu: int = Field(1, ge=1, description="Jobs run side by side on each GPU.")
    executor: ExecutorSpec = Field(
        default_factory=ExecutorSpec,
        description="Where jobs run: local processes (default) or e.g. a Ray cluster.",
    )
    patches: PatchSpec | None = Field(None, description="Patch-based execution, or null.")
    reshape: str | dict[str, Any] | None = Field(
        None,
        description="Layout of layer outputs for layer methods: null or 'auto' (inferred: "
        "channels-first, channels-last or tokens), or e.g. 'tokens:1:14x14' (one class "
        "token before a 14x14 patch grid) or {kind: tokens, extra: 1, grid: [14, 14]}.",
    )
    amp: Literal["bf16", "fp16", "tf32"] | None = Field(
        None, description="Mixed precision (bf16, fp16) or TF32 on CUDA; null: float32."
    )
    auto_batch: bool = Field(
        False,
        description=(
            "Let the pass planner run each method's perturbation passes at the size and "
            "layout measured fastest within memory (patches included; the job's params "
            "record the plan); other internal batches the largest that fits."
        ),
    )
    time_limit: float | None = Field(
        None, gt=0, description="Seconds per job; a job past it is killed (needs workers)."
    )
    seed: int | None = Field(0, description="Seed for stochastic methods (per job).")
    outputs: OutputSpec = Field(default_factory=OutputSpec, description="What to write.")
    evaluation: EvaluationSpec | None = Field(
        None, description="Metrics for `esegeta evaluate CONFIG` (null: every metric that applies)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Level of the run's log file."
    )
    progress: bool = Field(True, description="Show progress bars.")

    @field_validator("name")
    @classmethod
    def _one_folder(cls, value: str) -> str:
        problem = name_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("devices")
    @classmethod
    def _known_devices(cls, value: Literal["auto"] | list[str]) -> Literal["auto"] | list[str]:
        if value == "auto":
            return value
        if not value:
            raise ValueError("give at least one device, or 'auto'")
        from esegeta_core.runtime.scheduler import DEVICE_FORMS, DEVICE_PATTERN

        unknown = [d for d in value if not DEVICE_PATTERN.fullmatch(d)]
        if unknown:
            raise ValueError(
                f"unknown device(s) {unknown}; accepted: {', '.join(map(repr, DEVICE_FORMS))} "
                "(N = the GPU number), or devices: auto"
            )
        return value

    def run_dir(self, base: Path | None = None) -> Path:
        """The folder this run writes to (relative paths resolve against ``base``).

        It is always a direct sub-folder of ``output_dir``: a name that would leave it
        (one built without validation, or a symlink pointing elsewhere) is refused.
        """
        root = (self.output_dir if base is None else (base / self.output_dir)).resolve()
        problem = name_problem(self.name)
        folder = None if problem else (root / self.name).resolve()
        if folder is None or folder.parent != root:
            raise InvalidParamsError(
                f"Run name {self.name!r} does not give a folder directly inside output_dir "
                f"{root}"
                + (f" ({problem})" if problem else f" (it resolves to {folder})")
                + ". Use a plain folder name such as 'my-run'."
            )
        return folder


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a single folder name (a run name), or None when it is."""
    if not name.strip():
        return "name must not be empty"
    if name in (".", ".."):
        return f"name must not be {name!r}"
    if "\0" in name:
        return "name must not contain a NUL character"
    if "/" in name or "\\" in name:
        return f"name {name!r} must be one folder name, without '/' or '\\'"
    return None


MAX_CONFIG_BYTES = 1 << 20
"""The largest config file read (1 MiB): run configs are a few kilobytes."""


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (``*name``): a few hundred bytes of
    nested aliases (a "billion laughs" file) expand to gigabytes once validated."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                f"found the alias *{event.anchor}; run configs may not use YAML aliases "
                "(or '<<' merges of them): write the values out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def read_config_file(path: Path, what: str = "Config") -> str:
    """The text of a config file: at most :data:`MAX_CONFIG_BYTES`, UTF-8 (a BOM is
    dropped); every failure is an :class:`InvalidParamsError` naming the file."""
    try:
        with Path(path).open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise InvalidParamsError(
            f"{what} {path} cannot be read: {exc.strerror or exc}. Check the path."
        ) from exc
    if len(raw) > MAX_CONFIG_BYTES:
        try:
            length = Path(path).stat().st_size
        except OSError:
            length = 0
        size = f"{length:,} bytes" if length > MAX_CONFIG_BYTES else "too large"
        raise InvalidParamsError(
            f"{what} {path} is {size}; a config may have at most {MAX_CONFIG_BYTES:,} bytes "
            "(1 MiB), and a run config is a few kilobytes: check it is the right file."
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidParamsError(
            f"{what} {path} is not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8."
        ) from exc


def parse_config_text(text: str, suffix: str, source: str | Path | None = None) -> dict[str, Any]:
    """Parse YAML (``.yaml``/``.yml``) or JSON text into a dict.

    YAML aliases are refused (see :class:`_NoAliasLoader`); syntax errors become an
    :class:`InvalidParamsError` naming ``source`` (the file) and the line and column.
    """
    where = f"Config {source}" if source is not None else "The config"
    try:
        if suffix in (".yaml", ".yml"):
            data = yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader
        else:
            data = json.loads(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise InvalidParamsError(f"{where} is not valid YAML{at}: {problem}.") from exc
    except yaml.YAMLError as exc:
        raise InvalidParamsError(f"{where} is not valid YAML: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise InvalidParamsError(
            f"{where} is not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}."
        ) from exc
    except RecursionError as exc:
        raise InvalidParamsError(f"{where} is nested too deeply to be a run config.") from exc
    if not isinstance(data, dict):
        raise InvalidParamsError(f"{where}: a run config must be a mapping at the top level.")
    return data


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a run config; errors list every problem with its location.

    Files over :data:`MAX_CONFIG_BYTES` and YAML aliases are refused. A config names
    Python factories that are imported and called: run only configs you trust.
    """
    path = Path(path)
    data = parse_config_text(read_config_file(path), path.suffix.lower(), path)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = "\n".join(
            f"  {'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidParamsError(
            f"Config {path} is invalid:\n{problems}\nSee `esegeta schema` for every field."
        ) from exc


def config_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`RunConfig`."""
    return RunConfig.model_json_schema()
