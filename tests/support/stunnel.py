"""stunnel (Debian `stunnel4`) in front of programs that speak only TCP: a client service
that takes plain TCP and opens TLS to a server (verifying its certificate), and a server
service that ends TLS and hands plain TCP on. One stunnel process per test, in the
foreground, its log kept; every port on 127.0.0.1 and chosen at run time.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.output import read_text, tail
from tests.support.ports import HOST, wait_listening


def stunnel_binary() -> str | None:
    return shutil.which("stunnel4") or shutil.which("stunnel")


@dataclass
class Stunnel:
    directory: Path
    services: list[str] = field(default_factory=list)
    accepts: list[int] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.directory / "stunnel.log"

    def client(self, name: str, accept: int, connect: int, ca_file: Path,
               check_host: str = "localhost") -> Stunnel:
        """Plain TCP on `accept` → TLS to `connect`, the server's certificate verified
        against `ca_file` and its name against `check_host` (sent as SNI too)."""
        self.services.append(
            f"[{name}]\nclient = yes\naccept = {HOST}:{accept}\nconnect = {HOST}:{connect}\n"
            f"CAfile = {ca_file}\nverifyChain = yes\ncheckHost = {check_host}\n"
            f"sni = {check_host}\n")
        self.accepts.append(accept)
        return self

    def server(self, name: str, accept: int, connect: int, certificate: Path,
               private_key: Path) -> Stunnel:
        """TLS on `accept` (presenting `certificate`) → plain TCP to `connect`."""
        self.services.append(
            f"[{name}]\naccept = {HOST}:{accept}\nconnect = {HOST}:{connect}\n"
            f"cert = {certificate}\nkey = {private_key}\n")
        self.accepts.append(accept)
        return self

    def start(self) -> Stunnel:
        binary = stunnel_binary()
        if binary is None:
            raise FileNotFoundError("stunnel not found: apt-get install stunnel4 (scripts/test does)")
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "stunnel.conf"
        conf.write_text(
            f"foreground = yes\npid =\ndebug = 5\noutput = {self.log}\n\n"
            + "\n".join(self.services))
        self.proc = subprocess.Popen([binary, str(conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        for port in self.accepts:
            wait_listening(port, "tcp")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def describe(self, lines: int = 80) -> str:
        return f"stunnel log {self.log}:\n{tail(read_text(self.log), lines)}"
