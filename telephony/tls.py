"""TLS contexts for SIP over TLS from ``[sip]`` settings, and what the certificate says.

Both sides use TLS 1.2 or later with the ``ssl`` module's secure defaults (no
compression, no renegotiation, forward-secret AEAD suites first). The server side
presents ``tls_cert``/``tls_key`` and, unless ``tls_client_cert = "none"``, asks clients
for a certificate chaining to ``tls_ca`` or a line's ``tls_ca`` (``required``: no
certificate, no handshake). The client side checks the server's chain against
``tls_ca`` (else the system store) and its name (the host of the URI dialled, or its
IP address) unless ``tls_verify_server = false``; it presents our certificate too, for
peers that want mutual TLS.

:func:`load` builds both at start and again on SIGHUP (``Engine.reload_tls``); a bad
file on reload keeps the contexts in use and logs why.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from typing import Any

from config.schema import LineSettings
from config.telephony import SipSettings


@dataclass(frozen=True)
class TlsContexts:
    server: ssl.SSLContext
    client: ssl.SSLContext
    not_after: float
    """When our certificate expires (Unix time)."""
    subject: str
    """Our certificate's subject (common name), for logs."""
    line_issuers: dict[str, frozenset[str]]
    """Per line that wants mutual TLS: the subjects of the CAs that may issue its SBC's
    certificate (the line's ``tls_ca``, else ``sip.tls_ca``)."""


def load(s: SipSettings, lines: list[LineSettings]) -> TlsContexts:
    """Build the contexts; raises ``OSError`` / ``ssl.SSLError`` naming the bad file."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_2
    server.load_cert_chain(s.tls_cert, s.tls_key)
    cas = [p for p in [s.tls_ca, *(ln.tls_ca for ln in lines)] if p]
    if s.tls_client_cert != "none" and cas:
        for path in dict.fromkeys(cas):
            server.load_verify_locations(path)
        server.verify_mode = (ssl.CERT_REQUIRED if s.tls_client_cert == "required"
                              else ssl.CERT_OPTIONAL)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.minimum_version = ssl.TLSVersion.TLSv1_2
    if s.tls_ca:
        client.load_verify_locations(s.tls_ca)
    else:
        client.load_default_certs()
    if not s.tls_verify_server:
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
    client.load_cert_chain(s.tls_cert, s.tls_key)
    info = decode(s.tls_cert)
    issuers = {ln.name: frozenset(_subjects(ln.tls_ca or s.tls_ca))
               for ln in lines if ln.tls_client_cert}
    return TlsContexts(server, client, ssl.cert_time_to_seconds(info["notAfter"]),
                       _name(info.get("subject", ())), issuers)


def decode(path: str) -> dict[str, Any]:
    """The first certificate of a PEM file as ``ssl`` decodes peer certificates."""
    return ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined,no-any-return]


def _subjects(ca_path: str) -> list[str]:
    """Subjects of every certificate in a PEM bundle."""
    if not ca_path:
        return []
    import os
    import tempfile

    text = open(ca_path, encoding="ascii", errors="replace").read()  # noqa: SIM115
    out = []
    for block in text.split("-----END CERTIFICATE-----")[:-1]:
        pem = block[block.index("-----BEGIN CERTIFICATE-----"):] + "-----END CERTIFICATE-----\n"
        fd, tmp = tempfile.mkstemp(suffix=".pem")
        try:
            os.write(fd, pem.encode())
            os.close(fd)
            out.append(_dn(decode(tmp).get("subject", ())))
        finally:
            os.unlink(tmp)
    return out


def _dn(rdns: Any) -> str:
    return ",".join(f"{k}={v}" for rdn in rdns for k, v in rdn)


def _name(rdns: Any) -> str:
    for rdn in rdns:
        for k, v in rdn:
            if k == "commonName":
                return str(v)
    return _dn(rdns)


def issuer_of(cert: dict[str, Any] | None) -> str | None:
    """The issuer DN of a peer certificate as ``getpeercert()`` gives it."""
    return _dn(cert.get("issuer", ())) if cert else None


def days_left(not_after: float, now: float | None = None) -> float:
    return (not_after - (time.time() if now is None else now)) / 86400.0
