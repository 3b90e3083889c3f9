"""A third-party plugin installed with a real entry point (tests/plugins/esegeta_acme,
installed by the noxfile) is discovered and runs; an installed plugin whose import
fails (tests/plugins/esegeta_broken) does not stop the others."""

from __future__ import annotations

from importlib import metadata

import pytest
import torch

import esegeta_core as ec
from esegeta_core.testing import conformance_cases, run_conformance, tiny_input, tiny_model


def _require(dist: str) -> None:
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        pytest.fail(
            f"{dist} is not installed: `pip install -e tests/plugins/{dist.replace('-', '_')}` "
            "(the noxfile's test sessions do this)."
        )


def test_installed_third_party_plugin_is_discovered_and_runs():
    _require("esegeta-acme")
    ec.get_registry(refresh=True)
    names = {m.name: m for m in ec.list_methods()}
    assert names["acme.times_input"].plugin == "acme"
    model, x = tiny_model(), tiny_input()
    e = ec.explain(model, x, "acme.times_input", target=1, scale=2.0)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg)[:, 1].sum(), xg)
    assert torch.allclose(e.attributions, 2.0 * g * x)


@pytest.mark.parametrize("case", conformance_cases(plugin="acme"), ids=str)
def test_third_party_plugin_passes_conformance(case):
    run_conformance(case)


def test_installed_broken_plugin_is_recorded_and_does_not_stop_the_others():
    _require("esegeta-broken")
    registry = ec.get_registry(refresh=True)
    assert "acme.times_input" in registry.methods
    failure = registry.failures["broken"]
    assert "esegeta_backend_that_does_not_exist" in failure.error
    assert "esegeta-broken" in failure.source
    with pytest.raises(ec.PluginLoadError, match="esegeta_backend_that_does_not_exist"):
        ec.explain(tiny_model(), tiny_input(), "broken.method")
