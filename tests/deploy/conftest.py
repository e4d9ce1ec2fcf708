"""Fixtures of the deploy/ checks: each test taking `docs` runs once per overlay."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.tools import OVERLAYS, render


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def docs(overlay: str) -> list[dict[str, Any]]:
    return render(overlay)
