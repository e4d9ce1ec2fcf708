"""Certificates the tests make with `openssl`: a certificate authority and the leaves it
issues (a C2PA signer, a Kafka broker's TLS certificate). EC P-256 keys in PKCS#8."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def openssl(folder: Path, command: str, *more: str) -> None:
    """`openssl COMMAND MORE...` in `folder`: COMMAND split on spaces, each of MORE one
    argument (a subject with spaces). File names are relative to `folder`."""
    subprocess.run(
        ["openssl", *command.split(), *more],
        cwd=folder,
        check=True,
        capture_output=True,
        timeout=60,
    )


def certificate_authority(folder: Path, name: str) -> Path:
    """A self-signed CA "NAME CA" in `folder` (ca.pem, its key ca.key); returns ca.pem."""
    folder.mkdir(parents=True, exist_ok=True)
    openssl(folder, "ecparam -name prime256v1 -genkey -noout -out ca.key")
    openssl(
        folder,
        "req -x509 -new -key ca.key -sha256 -days 3650 -out ca.pem "
        "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign "
        "-addext subjectKeyIdentifier=hash -subj",
        f"/CN={name} CA/O={name}",
    )
    return folder / "ca.pem"


def issue(folder: Path, leaf: str, subject: str, extensions: str) -> tuple[Path, Path]:
    """A certificate for `subject` issued by the CA in `folder`, with `extensions` (openssl
    x509 extension lines), as LEAF.pem and LEAF.key (unencrypted PKCS#8); returns both."""
    openssl(folder, f"ecparam -name prime256v1 -genkey -noout -out {leaf}.ec")
    openssl(folder, f"pkcs8 -topk8 -nocrypt -in {leaf}.ec -out {leaf}.key")
    openssl(folder, f"req -new -key {leaf}.key -out {leaf}.csr -subj", subject)
    (folder / f"{leaf}.cnf").write_text(extensions)
    openssl(
        folder,
        f"x509 -req -in {leaf}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 "
        f"-sha256 -extfile {leaf}.cnf -out {leaf}.pem",
    )
    return folder / f"{leaf}.pem", folder / f"{leaf}.key"
