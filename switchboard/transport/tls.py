"""The TLS contexts of a node: the server one that `tls:` and `wss:` listeners present, the
client one that TLS connections we open verify their server with (RFC 3261 §26.3.1,
RFC 5922 §7), both from the `[tls]` files and read again on `reload()` (SIGHUP).

A reload loads the new files into the same context objects: connections already up keep
the certificate they were set up with, new handshakes use the new one, and nothing is
closed. New files that do not load leave the old ones in use.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

log = logging.getLogger(__name__)


class CertificateError(OSError):
    """A TLS listener without a usable certificate, or files that do not load."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    certificate: str = ""
    private_key: str = ""
    ca_file: str = ""
    verify_peer: bool = True
    require_client_certificate: bool = False


class TlsContexts:
    def __init__(self, files: TlsFiles, *, server: bool) -> None:
        """`server`: a listener needs the server context (and so a certificate)."""
        self.files = files
        self.server: ssl.SSLContext | None = None
        if server:
            if not files.certificate:
                raise CertificateError("a tls or wss listener needs [tls] certificate")
            self.server = self._server_context()
        self.client = self._client_context()

    def _server_context(self) -> ssl.SSLContext:
        files = self.files
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load_identity(ctx)
        if files.require_client_certificate:
            ctx.verify_mode = ssl.CERT_REQUIRED
            self._load_cas(ctx)
        return ctx

    def _client_context(self) -> ssl.SSLContext:
        files = self.files
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if files.verify_peer:
            self._load_cas(ctx)
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if files.certificate:
            self._load_identity(ctx)  # for servers that ask for a client certificate
        return ctx

    def _load_identity(self, ctx: ssl.SSLContext) -> None:
        files = self.files
        try:
            ctx.load_cert_chain(files.certificate, files.private_key or None)
        except (OSError, ValueError) as exc:
            raise CertificateError(
                f"cannot load [tls] certificate {files.certificate!r}: {exc}") from exc

    def _load_cas(self, ctx: ssl.SSLContext) -> None:
        ca_file = self.files.ca_file
        try:
            if ca_file:
                ctx.load_verify_locations(cafile=ca_file)
            else:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        except (OSError, ValueError) as exc:
            raise CertificateError(f"cannot load [tls] ca_file {ca_file!r}: {exc}") from exc

    def reload(self) -> bool:
        """Read the files again into the live contexts; False (old files kept) when the new
        ones do not load."""
        try:
            # Into throwaway contexts first: a half-loaded live context (new certificate,
            # old key) would fail every handshake.
            if self.server is not None:
                self._server_context()
            self._client_context()
            if self.server is not None:
                self._load_identity(self.server)
                if self.files.require_client_certificate:
                    self._load_cas(self.server)
            if self.files.verify_peer:
                self._load_cas(self.client)
            if self.files.certificate:
                self._load_identity(self.client)
        except CertificateError as exc:
            log.error("TLS files not reloaded, the old ones stay in use: %s", exc)
            return False
        log.info("TLS certificates reloaded from %s", self.files.certificate or "(none)")
        return True
