"""A pytest fixture for tests of the pass planner: every test starts and ends with an
empty plan cache (:func:`esegeta_core.runtime.passes.clear_plans`), so a plan measured
by one test never decides another's passes.

A test module takes it by importing it (autouse)::

    from esegeta_core.testing.plans import fresh_plans  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from esegeta_core.runtime import passes


@pytest.fixture(autouse=True)
def fresh_plans() -> Iterator[None]:
    """The plan cache emptied before and after the test."""
    passes.clear_plans()
    yield
    passes.clear_plans()
