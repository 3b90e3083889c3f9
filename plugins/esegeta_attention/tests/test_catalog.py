"""Registration, schemas and the CLI."""

from __future__ import annotations

import pytest

from esegeta_core import list_methods
from esegeta_core.cli import main

NAMES = {"attention.raw", "attention.rollout", "attention.gae"}


def test_methods_are_registered_with_described_parameters() -> None:
    infos = {m.name: m for m in list_methods() if m.plugin == "attention"}
    assert set(infos) == NAMES
    for info in infos.values():
        assert info.family == "layer" and info.ranks == (2, 3) and info.paper
        props = info.schema["properties"]
        assert all(p.get("description") for p in props.values()), info.name
    assert infos["attention.raw"].needs_layer


def test_cli_prints_the_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    main(["methods", "attention.rollout"])
    out = capsys.readouterr().out
    for word in ("discard_ratio", "head_fusion", "start_layer", "query", "windowed"):
        assert word in out
