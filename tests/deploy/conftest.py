"""Fixtures of the deploy/ checks: each test taking `docs` or `app` runs once per overlay."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.tools import DATA, OVERLAYS, render


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def app(overlay: str) -> list[dict[str, Any]]:
    """The app overlay alone: what `kubectl delete -k deploy/k8s/overlays/<overlay>` deletes."""
    return render(overlay)


@pytest.fixture
def data() -> list[dict[str, Any]]:
    """deploy/k8s/data alone: the namespace, Kafka and the registry volume."""
    return render(DATA)


@pytest.fixture
def docs(app: list[dict[str, Any]], data: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Everything an operator applies for one overlay: the data, then the app."""
    return data + app
