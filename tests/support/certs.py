"""Test certificates made at test time with the `openssl` command: a private CA and server
certificates it signs, for `localhost` and 127.0.0.1. Nothing is kept between runs.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificate:
    certificate: Path
    private_key: Path


@dataclass(frozen=True)
class TestPki:
    """A CA (`ca_file`) and a way to issue certificates under it."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    directory: Path
    ca_file: Path
    ca_key: Path

    def issue(self, name: str, *, common_name: str = "localhost",
              alt_names: str = "DNS:localhost,IP:127.0.0.1", days: int = 2) -> Certificate:
        """A certificate signed by the CA for `alt_names` (subjectAltName syntax)."""
        key = self.directory / f"{name}.key"
        csr = self.directory / f"{name}.csr"
        cert = self.directory / f"{name}.pem"
        ext = self.directory / f"{name}.ext"
        ext.write_text(f"subjectAltName={alt_names}\nextendedKeyUsage=serverAuth,clientAuth\n")
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={common_name}")
        _openssl("x509", "-req", "-in", csr, "-CA", self.ca_file, "-CAkey", self.ca_key,
                 "-CAcreateserial", "-out", cert, "-days", str(days), "-extfile", ext)
        return Certificate(cert, key)

    def self_signed(self, name: str, *, alt_names: str = "DNS:localhost,IP:127.0.0.1"
                    ) -> Certificate:
        """A certificate no CA of ours signed (what a verifying client must refuse)."""
        key = self.directory / f"{name}.key"
        cert = self.directory / f"{name}.pem"
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                 "-addext", f"subjectAltName={alt_names}")
        return Certificate(cert, key)


def make_pki(directory: Path) -> TestPki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = directory / "ca.key"
    ca_file = directory / "ca.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", ca_key, "-out", ca_file, "-days", "2", "-subj", "/CN=switchboard test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return TestPki(directory, ca_file, ca_key)


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)
