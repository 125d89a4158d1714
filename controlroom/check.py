"""``check-config`` is the truth: everything ``serve`` would fail on at start, found
before it starts, each problem named by its key.

:func:`check` runs after the schema (``config.load``) accepted the file and looks at
the world the settings point to: secrets (``env:``/``file:``) that resolve, model
folders that hold a model, certificates and keys that load, ports that are free and
not privileged, data paths that are writable, and, with ``connect=True``, a broker and
a database that answer. ``serve`` runs the same checks (without ``connect``) before it
starts anything and prints each problem on one line: a configuration problem never
ends in a traceback.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config import ConfigError, Settings
from config.loader import secret


@dataclass(frozen=True)
class Problem:
    """One thing ``serve`` would fail on: the dotted key and what is wrong."""

    key: str
    problem: str

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}"


def _secrets(s: Settings) -> Iterator[tuple[str, str | None]]:
    yield "sip.password", s.sip.password
    for i, line in enumerate(s.lines):
        yield f"lines[{i}].password", line.password
    yield "mqtt.password", s.mqtt.password
    yield "web.metrics_token", s.web.metrics_token
    yield "web.first_admin_password", s.web.first_admin_password
    url = getattr(s.storage, "url", "")
    if url:
        yield "storage.url", url


def check_secrets(s: Settings) -> list[Problem]:
    out = []
    for key, value in _secrets(s):
        try:
            resolved = secret(value, key=key)
        except ConfigError as exc:
            out.append(Problem(exc.key, exc.problem))
            continue
        if value is not None and resolved == "" and key != "sip.password":
            out.append(Problem(key, "is empty"))
    if s.web.first_admin and s.web.first_admin_password is not None:
        try:
            pw = secret(s.web.first_admin_password, key="web.first_admin_password") or ""
        except ConfigError:
            pw = None
        if pw is not None and pw:
            try:
                from console.users import MIN_PASSWORD
            except ImportError:  # pragma: no cover - older console
                MIN_PASSWORD = 10  # noqa: N806
            if len(pw) < MIN_PASSWORD:
                out.append(Problem("web.first_admin_password",
                                   f"must be at least {MIN_PASSWORD} characters"))
    return out


def check_models(s: Settings) -> list[Problem]:
    t = s.transcription
    if t.engine == "none":
        return []
    try:
        from transcription.engines import ModelError, validate_vosk_model, validate_whisper_model
    except ImportError as exc:  # pragma: no cover - a broken install
        return [Problem("transcription.engine", f"cannot load the speech engines: {exc}")]
    out = []
    checks = [("transcription.model", t.model)]
    if t.engine == "whisper" and t.live_model:
        checks.append(("transcription.live_model", t.live_model))
    for key, model in checks:
        try:
            (validate_vosk_model if t.engine == "vosk" else validate_whisper_model)(model)
        except ModelError as exc:
            out.append(Problem(key, str(exc)))
        except Exception as exc:  # noqa: BLE001 - e.g. the bundled model's package is missing
            out.append(Problem(key, f"{type(exc).__name__}: {exc}"))
    return out


def _readable(path: str) -> str | None:
    p = Path(path).expanduser()
    try:
        with open(p, "rb") as f:
            f.read(1)
    except OSError as exc:
        return f"cannot read {p}: {exc.strerror}"
    return None


def check_certificates(s: Settings) -> list[Problem]:
    out = []
    sip = s.sip
    if sip.tls:
        if not sip.tls_cert or not sip.tls_key:
            out.append(Problem("sip.tls_cert" if not sip.tls_cert else "sip.tls_key",
                               "is required when sip.tls = true"))
        else:
            bad = False
            for key, path in (("sip.tls_cert", sip.tls_cert), ("sip.tls_key", sip.tls_key)):
                if problem := _readable(path):
                    out.append(Problem(key, problem))
                    bad = True
            if not bad:
                try:
                    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                        sip.tls_cert, sip.tls_key)
                except (ssl.SSLError, ValueError) as exc:
                    out.append(Problem("sip.tls_cert", f"certificate and key do not load "
                                       f"together ({exc}): a PEM chain and its private key"))
    cas = [("sip.tls_ca", sip.tls_ca)] + [(f"lines[{i}].tls_ca", getattr(line, "tls_ca", ""))
                                          for i, line in enumerate(s.lines)]
    if s.mqtt.tls and s.mqtt.ca_file:
        cas.append(("mqtt.ca_file", s.mqtt.ca_file))
    for key, path in cas:
        if not path:
            continue
        if problem := _readable(path):
            out.append(Problem(key, problem))
            continue
        try:
            ssl.create_default_context().load_verify_locations(cafile=path)
        except (ssl.SSLError, ValueError) as exc:
            out.append(Problem(key, f"{path} is not a PEM CA bundle ({exc})"))
    return out


def _privileged(port: int) -> bool:
    if port == 0 or port >= 1024 or os.geteuid() == 0:
        return False
    try:
        start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        start = 1024
    if port >= start:
        return False
    try:  # CAP_NET_BIND_SERVICE (bit 10) in the effective set
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return not (int(line.split()[1], 16) >> 10) & 1
    except (OSError, ValueError):
        pass
    return True


def _bind_problem(host: str, port: int, kind: int) -> str | None:
    """Why ``serve`` could not listen on ``host:port`` (None: it could)."""
    if _privileged(port):
        return (f"port {port} is privileged (below 1024) and this user may not bind it: "
                "use a port >= 1024 (publish it as the low port) or grant "
                "CAP_NET_BIND_SERVICE")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, kind)
    except OSError as exc:
        return f"cannot open a socket: {exc.strerror}"
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return f"{host}:{port} is already in use (another process listens there)"
        if exc.errno == errno.EADDRNOTAVAIL:
            return f"{host} is not an address of this machine"
        if exc.errno == errno.EACCES:
            return f"{host}:{port}: permission denied"
        return f"cannot listen on {host}:{port}: {exc.strerror}"
    finally:
        sock.close()
    return None


def check_ports(s: Settings) -> list[Problem]:
    out = []
    sip = s.sip
    wants = [("sip.port", sip.bind, sip.port, socket.SOCK_DGRAM)]
    if sip.tcp:
        wants.append(("sip.port", sip.bind, sip.port, socket.SOCK_STREAM))
    if sip.tls:
        wants.append(("sip.tls_port", sip.bind, sip.tls_port, socket.SOCK_STREAM))
    if s.web.enabled:
        wants.append(("web.port", s.web.bind, s.web.port, socket.SOCK_STREAM))
        if s.web.metrics_port:
            wants.append(("web.metrics_port", s.web.metrics_bind, s.web.metrics_port,
                          socket.SOCK_STREAM))
    for key, host, port, kind in wants:
        if problem := _bind_problem(host, port, kind):
            out.append(Problem(key, problem))
    if sip.rtp_port_min > sip.rtp_port_max:
        out.append(Problem("sip.rtp_port_min", f"{sip.rtp_port_min} is above rtp_port_max "
                           f"{sip.rtp_port_max}"))
    elif problem := _bind_problem(sip.rtp_bind, 0, socket.SOCK_DGRAM):
        out.append(Problem("sip.rtp_bind", problem))
    elif sip.rtp_port_min < 1024 and _privileged(sip.rtp_port_min):
        out.append(Problem("sip.rtp_port_min", f"port {sip.rtp_port_min} is privileged"))
    return out


def check_engine_workers(s: Settings, *, ports: bool = True) -> list[Problem]:
    """``sip.engine_workers`` (telephony.workers): worker ``i`` needs SIP port
    ``port + i`` (and ``tls_port + i``) free, and a registered line cannot be served by
    several engines (each would REGISTER the same account with its own contact)."""
    sip = s.sip
    out: list[Problem] = []
    if sip.engine_workers < 2:
        return out
    for i, line in enumerate(s.lines):
        if line.mode == "registered":
            out.append(Problem("sip.engine_workers", f"must be 1 with a registered line "
                               f"(lines[{i}] {line.name!r}): every worker would register it"))
    for i in range(1, sip.engine_workers if sip.port and ports else 0):
        kinds = [("sip.engine_workers", sip.port + i, socket.SOCK_DGRAM)]
        if sip.tcp:
            kinds.append(("sip.engine_workers", sip.port + i, socket.SOCK_STREAM))
        if sip.tls and sip.tls_port:
            kinds.append(("sip.engine_workers", sip.tls_port + i, socket.SOCK_STREAM))
        for key, port, kind in kinds:
            if problem := _bind_problem(sip.bind, port, kind):
                out.append(Problem(key, f"worker {i} needs port {port}: {problem}"))
    return out


def check_addresses(s: Settings) -> list[Problem]:
    """The address we advertise in SDP and Contact must be one the far ends can reach."""
    sip = s.sip
    host = sip.public_host or sip.bind
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return [Problem("sip.public_host" if sip.public_host else "sip.bind",
                        f"{host!r} is not an IP address: it goes into SDP (c=) and Contact, "
                        "where SBCs and phones need the address they reach us on (a "
                        "container or host name does not resolve there)")]
    if addr.is_unspecified:
        return [Problem("sip.public_host", f"must be set when sip.bind is {sip.bind}: the "
                        "address the SBC and the handler phones send SIP and RTP to")]
    return []


def _writable_folder(p: Path) -> str | None:
    """Why ``serve`` could not create files in folder ``p`` (it creates the folder
    itself when its nearest existing parent lets it; nothing is created here)."""
    p = p.expanduser()
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if probe == p:
        try:
            with tempfile.NamedTemporaryFile(dir=p, prefix=".check-config-", delete=True):
                pass
        except OSError as exc:
            return f"{p} is not writable: {exc.strerror}"
        return None
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"cannot create {p}: {probe} is not writable by this user"
    return None


def check_paths(s: Settings) -> list[Problem]:
    out = []
    for folder in (s.storage.data_dir, s.storage.recordings_dir):
        if problem := _writable_folder(Path(folder)):
            out.append(Problem("storage.data_dir", problem))
            break
    if not getattr(s.storage, "url", "") and s.storage.database:
        db = Path(s.storage.database).expanduser()
        if db.exists() and not os.access(db, os.R_OK | os.W_OK):
            out.append(Problem("storage.database", f"{db} is not readable and writable"))
        elif not db.exists() and (problem := _writable_folder(db.parent)):
            out.append(Problem("storage.database", problem))
    return out


def _mqtt_connect(s: Settings, timeout: float) -> str | None:
    import asyncio

    import aiomqtt

    m = s.mqtt
    try:
        password = secret(m.password, key="mqtt.password")
    except ConfigError:
        return None  # reported by check_secrets

    async def attempt() -> None:
        tls = aiomqtt.TLSParameters(ca_certs=m.ca_file or None) if m.tls else None
        async with aiomqtt.Client(m.host, m.port, username=m.username or None,
                                  password=password, tls_params=tls, timeout=timeout,
                                  identifier=f"check-config-{os.getpid()}"):
            pass

    try:
        asyncio.run(asyncio.wait_for(attempt(), timeout + 1))
    except aiomqtt.MqttError as exc:
        return f"broker {m.host}:{m.port} refused or is unreachable: {exc}"
    except (TimeoutError, OSError) as exc:
        return f"broker {m.host}:{m.port} is unreachable: {exc or 'timed out'}"
    return None


def check_connect(s: Settings, timeout: float = 5.0) -> list[Problem]:
    out = []
    if s.mqtt.enabled and (problem := _mqtt_connect(s, timeout)):
        out.append(Problem("mqtt.host", problem))
    url = getattr(s.storage, "url", "")
    if url:
        try:
            resolved = secret(url, key="storage.url") or ""
        except ConfigError:
            resolved = ""
        if resolved:
            try:
                import psycopg

                with psycopg.connect(resolved, connect_timeout=int(timeout)):
                    pass
            except Exception as exc:  # noqa: BLE001 - any driver error is the message
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                out.append(Problem("storage.url", f"database unreachable: {first}"))
    return out


def check(s: Settings, *, connect: bool = False, ports: bool = True) -> list[Problem]:
    """Every problem ``serve`` would meet at start with these settings."""
    out: list[Problem] = []
    out += check_secrets(s)
    out += check_addresses(s)
    out += check_paths(s)
    out += check_certificates(s)
    if ports:
        out += check_ports(s)
    out += check_engine_workers(s, ports=ports)
    out += check_models(s)
    if connect:
        out += check_connect(s)
    return out


def notes(s: Settings) -> list[str]:
    """Choices that start fine but that an operator should make knowingly."""
    out: list[str] = []
    if s.storage.url and not s.cluster.global_queue:
        out.append("storage.url is a shared PostgreSQL store but cluster.global_queue is "
                   "false: this node routes only its own calls to its own handlers (set "
                   "global_queue = true on every node for one queue across the room)")
    return out


def summary(s: Settings) -> dict[str, Any]:
    return {"lines": [line.name for line in s.lines], "handlers": len(s.handlers),
            "transcription": s.transcription.engine}
