"""``import esegeta_core`` is cheap: a plugin's ``from esegeta_core import Explainer``
loads the contract, not the metrics, configs, runtime or file I/O (issue 18)."""

from __future__ import annotations

import pytest

import esegeta_core
from esegeta_core.testing.environment import modules_loaded_by


def _loaded_after(statement: str) -> set[str]:
    return modules_loaded_by(statement, ("esegeta_core",))


def test_the_contract_loads_alone():
    loaded = _loaded_after("from esegeta_core import Explainer, MethodParams, hookimpl")
    assert loaded <= {"esegeta_core", "esegeta_core.explainer", "esegeta_core.plugin"}, loaded


def test_evaluate_loads_on_first_use():
    loaded = _loaded_after("import esegeta_core")
    assert "esegeta_core.evaluation" not in loaded and "esegeta_core.config" not in loaded
    loaded = _loaded_after("from esegeta_core import evaluate")
    assert "esegeta_core.evaluation.api" in loaded


@pytest.mark.parametrize("name", esegeta_core.__all__)
def test_every_public_name_resolves(name):
    assert getattr(esegeta_core, name) is not None
    assert name in dir(esegeta_core)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        esegeta_core.no_such_name  # noqa: B018
