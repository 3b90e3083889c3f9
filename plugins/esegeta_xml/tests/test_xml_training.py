"""Three-phase training: the loss decreases, checkpoints, metrics, resume, early stopping,
the config and ``esegeta xml train``."""

from __future__ import annotations

import csv
import json

import esegeta_xml.training as training
import pytest
import torch
from esegeta_xml import ExplainerClassifier, load_trained, train
from esegeta_xml.config import PHASE_DEFAULTS, load_train_config, parse_train_config

from esegeta_core.cli import main as esegeta
from esegeta_core.errors import InvalidInputError, InvalidParamsError


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fast_config):
    return train(fast_config(tmp_path_factory.mktemp("xml")))


def test_short_training_run_lowers_the_loss(trained):
    first = [m for m in trained.metrics if m["phase"] == "classifier"]
    assert [m["epoch"] for m in first] == [1, 2, 3, 4]
    assert first[-1]["train_loss"] < first[0]["train_loss"]
    assert first[-1]["train_accuracy"] >= first[0]["train_accuracy"]
    expl = [m for m in trained.metrics if m["phase"] == "explainer"]
    assert expl[-1]["train_explanation"] < expl[0]["train_explanation"]
    assert [p.name for p in trained.phases] == ["classifier", "explainer", "both"]


def test_outputs_checkpoints_and_metrics(trained, blobs):
    out = trained.output_dir
    for i, name in enumerate(["classifier", "explainer", "both"]):
        assert (out / f"phase{i}-{name}" / "last.pt").is_file()
        assert (out / f"phase{i}-{name}" / "best.pt").is_file()
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == len(trained.metrics) == 8
    assert json.loads((out / "metrics.json").read_text()) == trained.metrics
    keys = {"train_loss", "train_classification", "train_explanation", "train_sparsity"}
    keys |= {"train_total_variation", "train_accuracy", "val_loss", "val_accuracy", "alpha"}
    assert keys <= set(rows[0])
    model = trained.model
    assert not model.training and all(p.requires_grad for p in model.parameters())
    again = load_trained(out)
    x = blobs(4, seed=5).images
    with torch.no_grad():
        assert torch.allclose(again(x), model(x), atol=1e-6)


def test_training_again_resumes_finished_phases(trained, fast_config):
    config = fast_config(trained.output_dir.parent)
    before = load_trained(trained.output_dir).state_dict()
    again = train(config)
    assert all(p.resumed for p in again.phases)
    assert again.metrics == trained.metrics
    for key, value in again.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_an_interrupted_phase_continues_after_its_last_epoch(tmp_path, monkeypatch, fast_config):
    config = fast_config(
        tmp_path,
        phases={"classifier": {"epochs": 3}, "explainer": {"epochs": 0}, "both": {"epochs": 0}},
    )
    real = training._Phase._epoch
    calls = []

    def crash_on_third(self, *args):
        calls.append(args[-1])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(training._Phase, "_epoch", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(training._Phase, "_epoch", real)
    result = train(config)
    assert calls == [1, 2, 3]
    assert [m["epoch"] for m in result.metrics] == [1, 2, 3]
    assert result.phases[0].resumed and result.phases[0].epochs_run == 3


def test_early_stopping_restores_the_best_weights(tmp_path, monkeypatch, fast_config):
    losses = iter([1.0, 0.5, 0.7, 0.9, 0.2])

    def fake_evaluate(*args, **kwargs):
        return {"loss": next(losses), "accuracy": 0.5}

    monkeypatch.setattr(training, "evaluate", fake_evaluate)
    config = fast_config(
        tmp_path,
        phases={
            "classifier": {"epochs": 5, "patience": 2},
            "explainer": {"epochs": 0},
            "both": {"epochs": 0},
        },
    )
    result = train(config)
    phase = result.phases[0]
    assert phase.stopped_early and phase.epochs_run == 4 and phase.best_epoch == 2
    best = torch.load(tmp_path / "run" / "phase0-classifier" / "best.pt", weights_only=True)
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, best["model"][key]), key


def test_frozen_modules_do_not_change(tmp_path, fast_config):
    result = train(
        fast_config(tmp_path, phases={"classifier": {"epochs": 0}, "both": {"epochs": 0}})
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        start = training.build_model(parse_train_config(fast_config(tmp_path)))
    for key, value in start.classifier.state_dict().items():
        assert torch.equal(value, result.model.classifier.state_dict()[key]), key
    assert any(
        not torch.equal(v, result.model.explainer.state_dict()[k])
        for k, v in start.explainer.state_dict().items()
    )


def test_hybrid_loss_uses_the_weak_masks(tmp_path, blobs, fast_config):
    result = train(
        fast_config(
            tmp_path,
            loss={"kind": "hybrid", "gamma": 1.0},
            phases={"classifier": {"epochs": 1}, "explainer": {"epochs": 1}, "both": {"epochs": 0}},
        )
    )
    assert "train_weak_mask" in result.metrics[-1] and "val_weak_mask" in result.metrics[-1]
    plain = (blobs(8).images, blobs(8).labels)
    no_masks = torch.utils.data.TensorDataset(*plain)
    with pytest.raises(InvalidInputError, match="weak masks"):
        train(
            fast_config(tmp_path / "b", loss={"kind": "hybrid"}),
            datasets=(no_masks, no_masks),
        )


def test_config_defaults_per_phase_and_errors(tmp_path):
    config = parse_train_config({"data": {"source": "shapes"}, "phases": {"both": {"epochs": 3}}})
    assert config.phases.both.epochs == 3
    assert config.phases.both.alpha == PHASE_DEFAULTS["both"]["alpha"] == 0.9
    assert config.phases.classifier.lr_explainer == 0 and config.phases.explainer.alpha == 0.25
    with pytest.raises(InvalidParamsError, match=r"phases\.both\.alpha"):
        parse_train_config({"data": {"source": "shapes"}, "phases": {"both": {"alpha": 2}}})
    with pytest.raises(InvalidParamsError, match="nothing would train"):
        parse_train_config(
            {
                "data": {"source": "shapes"},
                "phases": {"both": {"lr_classifier": 0, "lr_explainer": 0}},
            }
        )
    with pytest.raises(InvalidParamsError, match="btach_size"):
        parse_train_config({"data": {"source": "shapes"}, "btach_size": 3})
    path = tmp_path / "xml.yaml"
    path.write_text("data: {source: shapes, n_train: 8}\noutput_dir: out\n")
    assert load_train_config(path).output_dir == tmp_path / "out"


def test_cli_trains_from_a_yaml_config(tmp_path, capsys, fast_config):
    import yaml

    config = fast_config(
        tmp_path,
        phases={"classifier": {"epochs": 1}, "explainer": {"epochs": 1}, "both": {"epochs": 1}},
    )
    path = tmp_path / "xml.yaml"
    path.write_text(yaml.safe_dump(config))
    assert esegeta(["xml", "train", str(path), "--no-progress"]) == 0
    assert "model.pt: trained" in capsys.readouterr().out
    assert isinstance(load_trained(tmp_path / "run"), ExplainerClassifier)
    assert esegeta(["xml", "schema"]) == 0
    assert '"phases"' in capsys.readouterr().out
    path.write_text("data: {source: factory, factory: nowhere}\n")
    assert esegeta(["xml", "train", str(path)]) == 2
    assert "package.module:function" in capsys.readouterr().err


def test_resuming_with_another_config_is_refused(trained, fast_config):
    config = fast_config(trained.output_dir.parent, loss={"beta": 0.5})
    with pytest.raises(InvalidParamsError, match=r"another config \(changed: loss\.beta\)"):
        train(config)
    # runtime fields may change
    train(fast_config(trained.output_dir.parent, num_workers=0, progress=False))
