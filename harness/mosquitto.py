"""A real Mosquitto broker for tests and benchmarks, on a free loopback port.

Usage::

    with Mosquitto() as broker:          # started, accepting connections
        settings = MqttSettings(host=broker.host, port=broker.port)
        broker.stop()                    # outage
        broker.start()                   # same port again

Each instance writes its own config into a temp dir (persistence off unless asked, loopback
listener only, anonymous access unless ``users`` is given, in which case a password
file is generated with ``mosquitto_passwd``; with ``tls`` the listener speaks TLS with a
generated CA, see :attr:`Mosquitto.ca_file`). The port is chosen once and kept across
stop/start so clients can reconnect to the same address. The process is always stopped
on exit, even when the block raises.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"


class MosquittoError(RuntimeError):
    """The broker could not be started (message includes the tail of its log)."""


def free_port(host: str = HOST) -> int:
    """A free TCP port BELOW the kernel's ephemeral range.

    The broker keeps its port across stop/start; a port from the ephemeral range (what
    binding port 0 gives) could be taken as the source port of some client's outgoing
    connection while the broker is down, and the restart would fail.
    """
    try:
        from harness.ports import free_tcp_port  # shared cross-process leases
    except ImportError:
        pass
    else:
        return free_tcp_port()
    for _ in range(200):
        port = random.randint(10000, 32767)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise MosquittoError("no free TCP port found in 10000-32767")


def available() -> bool:
    """True when a ``mosquitto`` binary is installed (tests skip otherwise)."""
    return _binary() is not None


def _binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)),
        None)


def make_certs(directory: Path, host: str = HOST) -> dict[str, Path]:
    """A throw-away CA and a server certificate for ``host`` (IP SAN), made with openssl.

    Returns paths ``ca``, ``cert``, ``key``. Valid 2 days; for tests only.
    """
    d = Path(directory)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)
    run("req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"),
        "-days", "2", "-subj", "/CN=controlroom test CA")
    run("req", *ec, "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"),
        "-subj", f"/CN={host}")
    ext = d / "san.ext"
    san = f"IP:{host}" if host.replace(".", "").isdigit() else f"DNS:{host}"
    ext.write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.crt"), "-CAkey",
        str(d / "ca.key"), "-CAcreateserial", "-out", str(d / "server.crt"), "-days", "2",
        "-extfile", str(ext))
    return {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key"}


class Mosquitto:
    """One broker process; a context manager. ``port`` 0 picks a free one."""

    def __init__(self, *, port: int = 0, host: str = HOST,
                 users: dict[str, str] | None = None, persistence: bool = False,
                 tls: bool = False, extra_config: str = "",
                 start_timeout: float = 10.0) -> None:
        binary = _binary()
        if binary is None:
            raise MosquittoError("mosquitto is not installed")
        self.binary = binary
        self.host = host
        self.port = port or free_port(host)
        self.users = dict(users or {})
        self.persistence = persistence
        self.tls = tls
        self.extra_config = extra_config
        self.start_timeout = start_timeout
        self._tmp = tempfile.TemporaryDirectory(prefix="mosquitto-")
        self.dir = Path(self._tmp.name)
        self.config_path = self.dir / "mosquitto.conf"
        self.log_path = self.dir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ca_file = ""
        """With ``tls``: the CA certificate clients must trust (server cert is for 127.0.0.1)."""
        if tls:
            self.ca_file = str(make_certs(self.dir, host)["ca"])
        self._write_config()

    # -- config --------------------------------------------------------------
    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            # Off by default; on, sessions and queued QoS 1 messages survive a restart
            # (what a production broker does), saved in the temp dir at shutdown.
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.dir}/",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            # Tests pipeline hundreds of QoS 1 publishes; keep the broker from queueing
            # them behind a small in-flight window or dropping them past a small queue.
            "max_inflight_messages 0",
            "max_queued_messages 0",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # Run as root Mosquitto drops to user "mosquitto", which cannot read our
            # private temp dir (log, password file); stay the user that started it.
            lines.append("user root")
        if self.tls:
            lines += [f"cafile {self.dir / 'ca.crt'}", f"certfile {self.dir / 'server.crt'}",
                      f"keyfile {self.dir / 'server.key'}"]
        if self.users:
            pw = self.dir / "passwd"
            pw.write_text("")
            for user, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw), user, password],
                               check=True, capture_output=True, timeout=10)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if self.extra_config:
            lines.append(self.extra_config)
        self.config_path.write_text("\n".join(lines) + "\n")

    # -- lifecycle -----------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> None:
        """Start the broker and wait until it accepts TCP connections."""
        if self.running:
            return
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.proc = None
                raise MosquittoError(f"mosquitto exited at start: {err.strip()} {self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise MosquittoError(f"mosquitto did not listen on {self.host}:{self.port} "
                             f"within {self.start_timeout}s: {self.log_tail()}")

    def stop(self, *, kill: bool = False) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 5 s; ``kill`` sends SIGKILL at once)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            if kill:
                proc.kill()
            else:
                proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stderr:
            proc.stderr.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def close(self) -> None:
        """Stop and remove the temp dir."""
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
