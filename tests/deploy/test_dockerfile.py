"""deploy/Dockerfile: hadolint, and what the image must be (multi-stage, pinned by
the constraints, CPU and CUDA from one file, non-root, weights baked in)."""

from __future__ import annotations

import re

from tests.deploy.tools import DEPLOY, ROOT, run, tool

DOCKERFILE = DEPLOY / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_passes():
    done = run([tool("hadolint"), "--failure-threshold", "style", DOCKERFILE])
    assert done.returncode == 0, done.stdout + done.stderr


def test_multi_stage_with_cpu_and_cuda_variants():
    steps = instructions()
    assert sum(1 for word, _ in steps if word == "FROM") >= 2
    assert ("ARG", "VARIANT=cpu") in steps
    text = DOCKERFILE.read_text()
    assert "cpu)" in text and "cuda)" in text


def test_every_pip_install_is_pinned():
    for word, args in instructions():
        if word != "RUN":
            continue
        for command in re.split(r"&&|;|\|\|", args):
            if "pip install" not in command:
                continue
            pinned = "-c requirements/constraints.txt" in command or re.search(
                r"==\$\{?\w+", command
            )
            assert pinned, f"unpinned: {command.strip()}"


def test_runs_as_non_root_with_baked_weights():
    steps = instructions()
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the last USER must not be root"
    assert any(word == "RUN" and "dmguard models" in args for word, args in steps)
    assert any(word == "COPY" and "/opt/dmguard/models" in args for word, args in final)


def test_dockerignore_keeps_local_state_out():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".cache", "registry"} <= ignored
    for needed in (
        "README.md",
        "pyproject.toml",
        "dmguard",
        "benchmarks",
        "services",
        "actors",
        "training",
        "requirements",
    ):
        assert needed not in ignored


def test_base_image_is_pinned_by_digest():
    """Every stage starts from one base pinned by digest: a rebuild of the image gets
    the same Python patch release (Ray refuses a node whose Python differs)."""
    steps = instructions()
    args = dict(a.split("=", 1) for word, a in steps if word == "ARG" and "=" in a)
    bases = {
        args.get(a.strip("${}"), a) for word, a in steps if word == "FROM" for a in [a.split()[0]]
    }
    assert len(bases) == 1, f"stages from different bases: {bases}"
    (base,) = bases
    assert re.fullmatch(r"[\w./:-]+@sha256:[0-9a-f]{64}", base), f"not pinned by digest: {base}"


def test_cuda_variant_fails_the_build_without_onnxruntimes_cuda_provider():
    run_steps = [a for word, a in instructions() if word == "RUN" and "onnxruntime-gpu" in a]
    assert len(run_steps) == 1
    assert "CUDAExecutionProvider" in run_steps[0] and "sys.exit" in run_steps[0], (
        "a CUDA image whose onnxruntime has no CUDA provider would serve on the CPU"
    )
