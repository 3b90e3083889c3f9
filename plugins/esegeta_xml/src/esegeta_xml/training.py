"""Training an :class:`ExplainerClassifier` in the paper's three phases.

Rio-Torto, Fernandes & Teixeira, "Understanding the decisions of CNNs: an in-model
approach", Pattern Recognition Letters 133 (2020), https://doi.org/10.1016/j.patrec.2020.04.004.

Phase 0 trains the classifier (the explainer, frozen, lets everything through: its
initial maps are nearly all ones); phase 1 trains the explainer against the frozen
classifier; phase 2 fine-tunes both. Each phase has its own alpha, learning rates,
maximum epochs and early-stopping patience on the validation loss.

The output folder holds, per phase, ``phase<i>-<name>/last.pt`` (written atomically
after every epoch: weights, optimiser, counters, metrics so far) and ``best.pt`` (the
weights of lowest validation loss); ``metrics.json`` / ``metrics.csv`` (one row per
epoch: every loss term and the accuracy, training and validation); ``config.json``;
and at the end ``model.pt``, which :func:`load_trained` reads. Training the same
config into the same folder again resumes: finished phases are skipped and an
unfinished one continues after its last completed epoch.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from esegeta_core.errors import InvalidModelError, InvalidParamsError
from esegeta_core.files import atomic_path, write_json
from esegeta_core.progress import progress_bar
from esegeta_xml.config import LossSpec, PhaseSpec, TrainConfig, parse_train_config
from esegeta_xml.data import build_datasets, load_callable, split_batch
from esegeta_xml.losses import LossTerms, joint_loss
from esegeta_xml.model import ExplainerClassifier

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"


@dataclass
class PhaseResult:
    """How one phase went."""

    name: str
    epochs_run: int
    best_epoch: int | None
    best_val_loss: float | None
    stopped_early: bool
    resumed: bool = False


@dataclass
class TrainResult:
    """The trained model (eval mode), the per-epoch metrics and the output folder."""

    model: ExplainerClassifier
    metrics: list[dict[str, Any]]
    output_dir: Path
    phases: list[PhaseResult] = field(default_factory=list)


def build_model(config: TrainConfig) -> ExplainerClassifier:
    """The classifier from its factory, joined to a new explainer."""
    spec = config.model
    factory = load_callable(spec.classifier, "classifier factory")
    classifier = factory(**spec.kwargs)
    if not isinstance(classifier, nn.Module):
        raise InvalidModelError(
            f"The classifier factory {spec.classifier!r} returned "
            f"{type(classifier).__name__}, not a torch.nn.Module."
        )
    return ExplainerClassifier(
        classifier,
        in_channels=spec.in_channels,
        spatial_dims=spec.spatial_dims,
        multiply_after=spec.multiply_after,
        adapter=spec.adapter,
        widths=spec.widths,
        init_bias=spec.init_bias,
    )


def resolve_device(name: str) -> torch.device:
    """``"auto"`` = the first CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise InvalidParamsError(f"xML training: invalid device {name!r}: {exc}") from exc


def train(
    config: TrainConfig | Mapping[str, Any],
    *,
    model: ExplainerClassifier | None = None,
    datasets: tuple[Dataset, Dataset] | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """Train (or resume training) an :class:`ExplainerClassifier` as ``config`` says.

    Args:
        config: a :class:`TrainConfig` or its fields as a mapping.
        model: your own :class:`ExplainerClassifier`; default built from ``config.model``.
        datasets: your own ``(train, val)`` datasets; default from ``config.data``.
        progress: show progress bars (default ``config.progress``).

    Returns the trained model in eval mode, with every parameter trainable again.
    """
    config = parse_train_config(config)
    show = config.progress if progress is None else progress
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    if model is None:
        with torch.random.fork_rng(devices=[]):  # seeded weights, global RNG untouched
            torch.manual_seed(config.seed)
            model = build_model(config)
    elif not isinstance(model, ExplainerClassifier):
        raise InvalidModelError(
            f"xML training needs an ExplainerClassifier, got {type(model).__name__}: wrap "
            "the classifier, ExplainerClassifier(classifier, ...)."
        )
    model.to(device)
    train_set, val_set = datasets if datasets is not None else build_datasets(config.data)
    _check_same_config(out, config)
    write_json(out / "config.json", config.model_dump(mode="json"))
    metrics: list[dict[str, Any]] = []
    results = []
    try:
        for index, (name, phase) in enumerate(config.phases.ordered()):
            runner = _Phase(index, name, phase, config, model, device, out, show)
            results.append(runner.run(train_set, val_set, metrics))
    finally:
        _unfreeze(model)
        model.eval()
    _save(
        out / MODEL_FILE,
        {"model": model.state_dict(), "config": config.model_dump(mode="json")},
    )
    log.info("xML training finished: %s", out / MODEL_FILE)
    return TrainResult(model=model, metrics=metrics, output_dir=out, phases=results)


def load_trained(
    folder: str | Path,
    model: ExplainerClassifier | None = None,
    map_location: str | torch.device = "cpu",
) -> ExplainerClassifier:
    """The trained model of a training folder (``model.pt``), in eval mode.

    ``model``: an :class:`ExplainerClassifier` with the same architecture to load the
    weights into (needed when training was given its own model); default rebuilt
    from the folder's config. Also usable as an ``esegeta run`` model factory:
    ``factory: esegeta_xml:load_trained``, ``kwargs: {folder: ...}``.
    """
    path = Path(folder) / MODEL_FILE
    if not path.is_file():
        raise InvalidParamsError(
            f"{path} does not exist: train first (`esegeta xml train CONFIG` or "
            "esegeta_xml.train(config)) with this output folder."
        )
    saved = torch.load(path, map_location=map_location, weights_only=True)
    if model is None:
        model = build_model(parse_train_config(saved["config"], where=f"config in {path}"))
    model.load_state_dict(saved["model"])
    return model.eval()


def evaluate(
    model: ExplainerClassifier,
    dataset: Dataset,
    *,
    alpha: float,
    loss: LossSpec | None = None,
    batch_size: int = 16,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Mean loss terms and accuracy of ``model`` (eval mode, no gradients) on ``dataset``."""
    loss = loss or LossSpec()
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    correct = seen = 0
    try:
        with torch.no_grad():
            for batch in DataLoader(dataset, batch_size=batch_size):
                x, y, m = _to(split_batch(batch), device)
                logits, z = model.forward_with_explanation(x)
                terms = _terms(logits, y, z, m, alpha, loss)
                for key, value in terms.as_floats().items():
                    totals[key] = totals.get(key, 0.0) + value * len(y)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
    finally:
        model.train(was_training)
    out = {key: value / max(seen, 1) for key, value in totals.items()}
    out["accuracy"] = correct / max(seen, 1)
    return out


class _Phase:
    """One phase: freezing, optimiser, epochs, early stopping, checkpoints, resume."""

    def __init__(
        self,
        index: int,
        name: str,
        spec: PhaseSpec,
        config: TrainConfig,
        model: ExplainerClassifier,
        device: torch.device,
        out: Path,
        show: bool,
    ) -> None:
        self.index, self.name, self.spec, self.config = index, name, spec, config
        self.model, self.device, self.show = model, device, show
        self.folder = out / f"phase{index}-{name}"
        self.label = f"phase {index} ({name})"

    def run(
        self, train_set: Dataset, val_set: Dataset, metrics: list[dict[str, Any]]
    ) -> PhaseResult:
        spec, model = self.spec, self.model
        last = self.folder / "last.pt"
        state: dict[str, Any] = {
            "epoch": 0,
            "best_loss": None,
            "best_epoch": None,
            "bad_epochs": 0,
            "finished": False,
            "stopped_early": False,
            "metrics": [],
        }
        resumed = last.is_file()
        saved = None
        if resumed:
            saved = torch.load(last, map_location=self.device, weights_only=True)
            model.load_state_dict(saved["model"])
            state.update({k: saved[k] for k in state})
            log.info("%s: resuming after epoch %d", self.label, state["epoch"])
        metrics.extend(state["metrics"])
        if state["finished"] or spec.epochs == 0:
            return self._result(state, resumed)
        optimiser = self._setup()
        if saved is not None and saved.get("optimiser") is not None:
            optimiser.load_state_dict(saved["optimiser"])
        while state["epoch"] < spec.epochs and not state["finished"]:
            epoch = state["epoch"] + 1
            start = time.perf_counter()
            train_terms = self._epoch(optimiser, train_set, epoch)
            val_terms = evaluate(
                model,
                val_set,
                alpha=spec.alpha,
                loss=self.config.loss,
                batch_size=self.config.batch_size,
                device=self.device,
            )
            self._set_modes()  # evaluate() put everything in eval mode
            improved = state["best_loss"] is None or val_terms["loss"] < state["best_loss"]
            if improved:
                state.update(best_loss=val_terms["loss"], best_epoch=epoch, bad_epochs=0)
                _save(self.folder / "best.pt", {"model": model.state_dict(), "epoch": epoch})
            else:
                state["bad_epochs"] += 1
            record = {
                "phase": self.name,
                "phase_index": self.index,
                "epoch": epoch,
                "alpha": spec.alpha,
                "lr_classifier": spec.lr_classifier,
                "lr_explainer": spec.lr_explainer,
                **{f"train_{k}": v for k, v in train_terms.items()},
                **{f"val_{k}": v for k, v in val_terms.items()},
                "best": improved,
                "seconds": round(time.perf_counter() - start, 3),
            }
            state["metrics"].append(record)
            metrics.append(record)
            state["epoch"] = epoch
            log.info(
                "%s epoch %d/%d: train loss %.4f acc %.3f | val loss %.4f acc %.3f%s",
                self.label,
                epoch,
                spec.epochs,
                train_terms["loss"],
                train_terms["accuracy"],
                val_terms["loss"],
                val_terms["accuracy"],
                " (best)" if improved else "",
            )
            if spec.patience is not None and state["bad_epochs"] >= spec.patience:
                state["stopped_early"] = True
                log.info(
                    "%s: early stop (no better val loss for %d epochs)", self.label, spec.patience
                )
            if state["stopped_early"] or state["epoch"] >= spec.epochs:
                self._finish(state)
            self._checkpoint(state, optimiser)
            _write_metrics(self.config.output_dir, metrics)
        return self._result(state, resumed)

    def _finish(self, state: dict[str, Any]) -> None:
        best = self.folder / "best.pt"
        if self.config.restore_best and best.is_file():
            saved = torch.load(best, map_location=self.device, weights_only=True)
            self.model.load_state_dict(saved["model"])
        state["finished"] = True

    def _checkpoint(self, state: dict[str, Any], optimiser: torch.optim.Optimizer) -> None:
        _save(
            self.folder / "last.pt",
            {
                **state,
                "model": self.model.state_dict(),
                "optimiser": None if state["finished"] else optimiser.state_dict(),
            },
        )

    def _result(self, state: dict[str, Any], resumed: bool) -> PhaseResult:
        return PhaseResult(
            name=self.name,
            epochs_run=int(state["epoch"]),
            best_epoch=state["best_epoch"],
            best_val_loss=state["best_loss"],
            stopped_early=bool(state["stopped_early"]),
            resumed=resumed,
        )

    def _trained(self) -> list[tuple[nn.Module, float]]:
        pairs = [
            (self.model.classifier, self.spec.lr_classifier),
            (self.model.explainer, self.spec.lr_explainer),
        ]
        return [(module, lr) for module, lr in pairs if lr > 0]

    def _set_modes(self) -> None:
        self.model.train()
        for module, lr in (
            (self.model.classifier, self.spec.lr_classifier),
            (self.model.explainer, self.spec.lr_explainer),
        ):
            module.train(lr > 0)
            for p in module.parameters():
                p.requires_grad_(lr > 0)

    def _setup(self) -> torch.optim.Optimizer:
        self._set_modes()
        groups = [
            {"params": [p for p in module.parameters()], "lr": lr} for module, lr in self._trained()
        ]
        c = self.config
        if c.optimizer == "adam":
            return torch.optim.Adam(groups, weight_decay=c.weight_decay)
        return torch.optim.SGD(groups, momentum=c.momentum, weight_decay=c.weight_decay)

    def _epoch(
        self, optimiser: torch.optim.Optimizer, dataset: Dataset, epoch: int
    ) -> dict[str, float]:
        c = self.config
        generator = torch.Generator().manual_seed(c.seed * 1_000_003 + self.index * 10_007 + epoch)
        loader = DataLoader(
            dataset,
            batch_size=c.batch_size,
            shuffle=True,
            generator=generator,
            num_workers=c.num_workers,
            # a last batch of one item would break BatchNorm layers of the classifier
            drop_last=len(dataset) % c.batch_size == 1 and len(dataset) > 1,  # type: ignore[arg-type]
        )
        bar = progress_bar(len(loader), f"xml {self.name} epoch {epoch}", enabled=self.show)
        totals: dict[str, float] = {}
        correct = seen = 0
        try:
            for batch in loader:
                x, y, m = _to(split_batch(batch), self.device)
                optimiser.zero_grad(set_to_none=True)
                logits, z = self.model.forward_with_explanation(x)
                terms = _terms(logits, y, z, m, self.spec.alpha, c.loss)
                if not math.isfinite(float(terms.total.detach())):
                    raise InvalidParamsError(
                        f"xML training {self.label} epoch {epoch}: the loss is not finite; "
                        "lower the learning rates."
                    )
                terms.total.backward()
                optimiser.step()
                for key, value in terms.as_floats().items():
                    totals[key] = totals.get(key, 0.0) + value * len(y)
                correct += int((logits.detach().argmax(1) == y).sum())
                seen += len(y)
                bar.update(1)
        finally:
            bar.close()
        out = {key: value / max(seen, 1) for key, value in totals.items()}
        out["accuracy"] = correct / max(seen, 1)
        return out


def _terms(
    logits: torch.Tensor,
    y: torch.Tensor,
    z: torch.Tensor,
    m: torch.Tensor | None,
    alpha: float,
    loss: LossSpec,
) -> LossTerms:
    return joint_loss(
        logits,
        y,
        z,
        alpha=alpha,
        beta=loss.beta,
        kind=loss.kind,
        gamma=loss.gamma,
        mask=m,
    )


def _to(
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    x, y, m = batch
    return x.to(device), y.to(device), None if m is None else m.to(device)


RUNTIME_FIELDS = frozenset({"output_dir", "device", "num_workers", "progress"})
"""Config fields that may change between a run and its resumption."""


def _check_same_config(out: Path, config: TrainConfig) -> None:
    """Resuming a run with another config would mix two trainings: refuse it."""
    path = out / "config.json"
    if not path.is_file() or not any(out.glob("phase*/last.pt")):
        return
    import json

    previous = json.loads(path.read_text())
    current = config.model_dump(mode="json")
    changed = [
        key for key in _diff(previous, current) if key.split(".", 1)[0] not in RUNTIME_FIELDS
    ]
    if changed:
        raise InvalidParamsError(
            f"{out} holds an xML training run of another config (changed: "
            f"{', '.join(changed)}); training into the same folder resumes that run, so "
            f"the config must stay the same. Use a new output_dir, or delete {out}."
        )


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            path
            for key in sorted(set(a) | set(b), key=str)
            for path in _diff(a.get(key), b.get(key), f"{prefix}{key}.")
        ]
    return [] if a == b else [prefix.rstrip(".")]


def _unfreeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(True)


def _save(path: Path, obj: Any) -> None:
    """``torch.save`` atomically (a killed run never leaves a half-written checkpoint)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _write_metrics(folder: Path, metrics: list[dict[str, Any]]) -> None:
    folder = Path(folder)
    write_json(folder / METRICS_JSON, metrics)
    columns: list[str] = []
    for record in metrics:
        columns += [k for k in record if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(metrics)
    with atomic_path(folder / METRICS_CSV) as tmp:
        tmp.write_text(buffer.getvalue())
