"""Debian's baresip (1.0) as a headless, auto-answering handler phone.

``Baresip(user="h7", registrar=kamailio.addr, domain=..., audio=wav)`` writes a config dir
(``config`` with no audio hardware: ``aufile`` plays an 8 kHz mono WAV as the microphone,
``sndfile`` dumps decoded audio of both directions into ``<dir>/dump``; ``accounts`` with
``answermode=auto`` registering through Kamailio as outbound proxy) and runs
``baresip -f <dir>`` in the foreground. ``ctrl_tcp`` is loaded so tests can send commands
(``hangup``, ``dial``) with :meth:`Baresip.command`.

Use as a context manager; :meth:`start` waits until Kamailio has the registration.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from types import TracebackType

from .kamailio import HarnessError, Process, sip_options
from .ports import HOST, free_rtp_range, free_tcp_port, free_udp_port, release

BARESIP = shutil.which("baresip") or "/usr/bin/baresip"
MODULES = Path("/usr/lib/baresip/modules")


class Baresip:
    """A baresip user agent registered at ``registrar`` as ``sip:user@domain``.

    Args:
        audio: 8 kHz mono 16-bit WAV sent as microphone audio (None: 120 s of silence).
            baresip hangs up when the file ends ("audio error: end of file"), so the
            file's length is how long the handler talks before hanging up itself.
        codecs: ``audio_codecs`` account parameter, e.g. ``"PCMA"`` or ``"PCMU,PCMA"``.
        answermode: ``auto`` answers every call at once; ``manual`` waits for ``accept``.
        mediaenc: media encryption (baresip's ``srtp`` module, SDES keys in ``a=crypto``):
            ``srtp-mand`` takes only RTP/SAVP with keys, ``srtp`` SRTP when offered
            (best-effort); "" plain RTP.
        tls: ``(cert, key, ca)`` PEM paths: SIP over TLS (``sip_certificate``,
            ``sip_cafile``) through the registrar's TLS port ``tls_port``; with
            ``register=False`` it only places calls (:meth:`dial`), e.g. as a 999 caller.
    """

    def __init__(self, *, user: str, registrar: tuple[str, int], domain: str,
                 audio: Path | None = None, codecs: str = "PCMA,PCMU",
                 answermode: str = "auto", workdir: Path | None = None,
                 mediaenc: str = "", tls: tuple[Path, Path, Path] | None = None,
                 tls_port: int = 0, register: bool = True) -> None:
        self.tls = tls
        self.tls_port = tls_port
        self.register = register
        self.user = user
        self.registrar = registrar
        self.domain = domain
        self.audio = audio
        self.codecs = codecs
        self.answermode = answermode
        self.mediaenc = mediaenc
        self.port = free_udp_port()
        self.ctrl_port = free_tcp_port()
        self.rtp_min, self.rtp_max = free_rtp_range(8)
        self._own_dir = workdir is None
        self.dir = workdir or Path(tempfile.mkdtemp(prefix=f"baresip-{user}-"))
        self.dump_dir = self.dir / "dump"
        self._proc: Process | None = None

    @property
    def addr(self) -> tuple[str, int]:
        return (HOST, self.port)

    def config_text(self, audio: Path) -> str:
        mods = ["g711.so", "aufile.so", "sndfile.so", "ctrl_tcp.so", "menu.so", "account.so",
                *(["srtp.so"] if self.mediaenc else [])]
        for m in mods:
            if not (MODULES / m).exists():
                raise HarnessError(f"baresip module {m} missing in {MODULES}")
        return "\n".join([
            "poll_method\t\tepoll",
            f"sip_listen\t\t{HOST}:{self.port}",
            "sip_trans_def\t\tudp",
            f"audio_source\t\taufile,{audio}",
            "ausrc_srate\t\t8000",
            "auplay_srate\t\t8000",
            "ausrc_channels\t\t1",
            "auplay_channels\t\t1",
            "audio_level\t\tno",
            f"rtp_ports\t\t{self.rtp_min}-{self.rtp_max}",
            "rtcp_mux\t\tno",
            "jitter_buffer_delay\t1-5",
            f"net_interface\t\t{HOST}",
            f"module_path\t\t{MODULES}",
            *[f"module\t\t\t{m}" for m in mods if m not in ("menu.so", "account.so")],
            "module_app\t\taccount.so",
            "module_app\t\tmenu.so",
            f"ctrl_tcp_listen\t\t{HOST}:{self.ctrl_port}",
            f"snd_path\t\t{self.dump_dir}",
            "",
        ])

    def _tls_config(self, cfg: str) -> str:
        """SIP over TLS: our certificate (cert + key in one file, as baresip wants) and
        the CA it trusts."""
        if self.tls is None:
            return cfg
        cert, key, ca = self.tls
        combined = self.dir / "sip-cert.pem"
        combined.write_text(Path(cert).read_text() + Path(key).read_text())
        return (cfg.replace("sip_trans_def\t\tudp", "sip_trans_def\t\ttls")
                + f"sip_certificate\t\t{combined}\nsip_cafile\t\t{ca}\n")

    def account_text(self) -> str:
        if self.tls is not None:
            return (f"<sip:{self.user}@{self.domain};transport=tls>"
                    f";outbound=\"sip:{self.registrar[0]}:{self.tls_port};transport=tls;lr\""
                    f";answermode={self.answermode};regint={600 if self.register else 0}"
                    f";audio_codecs={self.codecs.lower()};ptime=20;mwi=no;pubint=0"
                    + (f";mediaenc={self.mediaenc}" if self.mediaenc else "") + "\n")
        return (f"<sip:{self.user}@{self.domain};transport=udp>"
                f";outbound=\"sip:{self.registrar[0]}:{self.registrar[1]};lr\""
                f";answermode={self.answermode};regint=600;audio_codecs={self.codecs.lower()}"
                f";ptime=20;mwi=no;pubint=0"
                + (f";mediaenc={self.mediaenc}" if self.mediaenc else "") + "\n")

    def start(self, timeout: float = 10.0) -> Baresip:
        """Start baresip and wait until its registration is visible at the registrar."""
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        audio = self.audio
        if audio is None:
            import numpy as np

            from .speech import write_wav
            audio = write_wav(self.dir / "silence.wav", np.zeros(8000 * 120, dtype=np.int16))
        (self.dir / "config").write_text(self._tls_config(self.config_text(audio)))
        (self.dir / "accounts").write_text(self.account_text())
        (self.dir / "contacts").write_text("")
        self._proc = Process([BARESIP, "-f", str(self.dir)], log_path=self.dir / "baresip.log",
                             cwd=self.dir, env={**os.environ, "HOME": str(self.dir)})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._proc.alive():
                raise HarnessError(f"baresip exited:\n{self.log_text()}")
            if not self.register:
                if "baresip is ready" in self.log_text():
                    return self
                time.sleep(0.1)
                continue
            # Registered once the proxy routes an OPTIONS for the user to baresip.
            if sip_options(self.registrar, timeout=0.3, user=self.user) == 200:
                return self
            time.sleep(0.1)
        self.stop()
        raise HarnessError(f"baresip {self.user} did not register in {timeout} s:\n"
                           f"{self.log_text()}")

    def command(self, command: str, params: str = "", timeout: float = 3.0) -> dict:
        """Send a ctrl_tcp command (netstring JSON); returns the parsed response."""
        body = json.dumps({"command": command, "params": params, "token": "t"}).encode()
        with socket.create_connection((HOST, self.ctrl_port), timeout=timeout) as s:
            s.sendall(str(len(body)).encode() + b":" + body + b",")
            buf = b""
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                # Events ({"event": true, ...}) may come before the response: skip them.
                while True:
                    head, _, rest = buf.partition(b":")
                    if not head.isdigit() or len(rest) < int(head) + 1:
                        break
                    msg = json.loads(rest[:int(head)])
                    if msg.get("response"):
                        return msg
                    buf = rest[int(head) + 1:]
        raise HarnessError(f"no ctrl_tcp response to {command!r}:\n{self.log_text()}")

    def dial(self, uri: str) -> dict:
        """Place a call to ``uri`` (through the outbound proxy)."""
        return self.command("dial", uri)

    def dumps(self) -> list[Path]:
        """WAV files sndfile wrote (``*-dec.wav``: what baresip received and decoded)."""
        return sorted(self.dump_dir.glob("*.wav"))

    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            release(self.port, self.ctrl_port, *range(self.rtp_min, self.rtp_max + 1))

    def log_text(self, tail: int = 20000) -> str:
        return self._proc.log_text(tail) if self._proc else ""

    def __enter__(self) -> Baresip:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        if self._own_dir and et is None and os.environ.get("HARNESS_KEEP_LOGS") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)
