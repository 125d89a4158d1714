"""Throw-away certificates for TLS tests, made with the ``openssl`` command line.

Nothing here is ever committed: each test makes its CA and certificates in its own temp
folder. ``CertAuthority(dir)`` makes a CA (P-256, valid two days); ``issue(...)`` gives
a certificate for names and addresses (server and client use), ``days=-1`` an expired
one; :func:`self_signed` one that chains to nothing.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


def _run(*args: str, cwd: Path) -> None:
    r = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {r.stderr.strip()}")


def _ext(dir: Path, stem: str, ips: tuple[str, ...], dns: tuple[str, ...]) -> Path:
    sans = [f"IP:{ip}" for ip in ips] + [f"DNS:{d}" for d in dns]
    p = dir / f"{stem}.ext"
    p.write_text("basicConstraints=CA:FALSE\n"
                 "keyUsage=digitalSignature,keyEncipherment\n"
                 "extendedKeyUsage=serverAuth,clientAuth\n"
                 + (f"subjectAltName={','.join(sans)}\n" if sans else ""))
    return p


class CertAuthority:
    """A CA in ``dir`` (``<stem>.pem`` / ``<stem>.key``)."""

    def __init__(self, dir: Path, name: str = "controlroom test CA", stem: str = "ca") -> None:
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = self.dir / f"{stem}.pem", self.dir / f"{stem}.key"
        _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(self.key), "-out", str(self.cert), "-days", "2",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=self.dir)

    def issue(self, stem: str, cn: str, *, ips: tuple[str, ...] = ("127.0.0.1",),
              dns: tuple[str, ...] = ("localhost",), days: int = 2) -> CertFiles:
        """A certificate for ``cn`` with the given subjectAltNames; ``days=-1``: expired."""
        key, csr, cert = (self.dir / f"{stem}.key", self.dir / f"{stem}.csr",
                          self.dir / f"{stem}.pem")
        _run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}", cwd=self.dir)
        _run("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
             "-CAcreateserial", "-days", str(days), "-out", str(cert),
             "-extfile", str(_ext(self.dir, stem, ips, dns)), cwd=self.dir)
        return CertFiles(cert, key)


def self_signed(dir: Path, stem: str, cn: str, *, ips: tuple[str, ...] = ("127.0.0.1",),
                dns: tuple[str, ...] = ("localhost",)) -> CertFiles:
    """A certificate signed by its own key (chains to no CA)."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    key, cert = dir / f"{stem}.key", dir / f"{stem}.pem"
    sans = ",".join([f"IP:{ip}" for ip in ips] + [f"DNS:{d}" for d in dns])
    _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={cn}",
         "-addext", f"subjectAltName={sans}", cwd=dir)
    return CertFiles(cert, key)
