"""Run SIPp (Debian ``sip-tester``, v3.6 with pcap play) as a caller or a handler phone.

``Sipp(xml, target=kamailio.addr, calls=1)`` writes the scenario (see
:mod:`harness.scenarios`) into a temp dir and runs SIPp on ``127.0.0.1`` with a free SIP
port and a free media port, tracing statistics (``-trace_stat``), unexpected messages
(``-trace_err``), response times (``-trace_rtt``) and, by default, every SIP message
(``-trace_msg``). Use it as a context manager: the process is always stopped.

* ``wait(timeout)`` returns SIPp's exit code (0: every call succeeded, 1: some failed,
  99: no call processed); ``stats()`` is the last row of the statistics CSV;
  ``diagnostics()`` is the text to put in an assertion message.
* ``RtpCapture(ports)`` records loopback UDP on the given ports with ``dumpcap`` so a
  test can compare what a peer received, bit for bit, with :func:`speech.read_rtp_pcap`.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from .kamailio import HarnessError, Process
from .ports import HOST, free_rtp_range, free_udp_port, release
from .speech import CapturedRtp, read_rtp_pcap

SIPP = shutil.which("sipp") or "/usr/bin/sipp"
DUMPCAP = shutil.which("dumpcap") or "/usr/bin/dumpcap"


class Sipp:
    """One SIPp process.

    Args:
        scenario: scenario XML text.
        target: where a client scenario sends (the proxy); None for a server (UAS).
        calls: stop after this many calls (``-m``).
        rate: new calls per ``rate_period_ms`` (client); ``limit`` caps concurrent calls.
        rate_increase / rate_max: ramp (``-rate_increase`` every ``rate_interval`` s).
        port / media_port: SIP and RTP ports (0: free ones).
        trace_msg: log every SIP message (turn off under load).
        timeout: SIPp's own global timeout in seconds (it then exits non-zero).
        service: ``-s`` value (``[service]`` keyword).
        host: the local address for SIP and RTP (a bridge address when the far ends
            live in network namespaces); 127.0.0.1 by default.
    """

    def __init__(self, scenario: str, *, target: tuple[str, int] | None = None,
                 calls: int = 1, rate: float | None = None, rate_period_ms: int = 1000,
                 limit: int | None = None, rate_increase: float | None = None,
                 rate_interval: float = 1.0, rate_max: float | None = None,
                 port: int = 0, media_port: int = 0, trace_msg: bool = True,
                 timeout: float = 120.0, name: str = "sipp", service: str = "",
                 extra_args: Sequence[str] = (), workdir: Path | None = None,
                 rtp_echo: bool = False, host: str = HOST) -> None:
        self.scenario = scenario
        self.host = host
        self.target = target
        self.calls = calls
        self.rate = rate
        self.rate_period_ms = rate_period_ms
        self.limit = limit
        self.rate_increase = rate_increase
        self.rate_interval = rate_interval
        self.rate_max = rate_max
        self.port = port or free_udp_port()
        self.media_port = media_port or free_rtp_range(4)[0]
        self.trace_msg = trace_msg
        self.timeout = timeout
        self.name = name
        self.service = service
        self.extra_args = list(extra_args)
        self.rtp_echo = rtp_echo
        self._own_dir = workdir is None
        self.dir = workdir or Path(tempfile.mkdtemp(prefix=f"{name}-"))
        self.scenario_path = self.dir / f"{name}.xml"
        self._proc: Process | None = None
        self.exit_code: int | None = None
        self._final: dict | None = None

    @property
    def addr(self) -> tuple[str, int]:
        """``(host, port)`` SIPp's SIP socket listens on."""
        return (self.host, self.port)

    def contact(self, user: str) -> str:
        """The contact URI to register for a handler phone run by this SIPp."""
        return f"sip:{user}@{self.host}:{self.port}"

    def argv(self) -> list[str]:
        a = [SIPP]
        if self.target is not None:
            a.append(f"{self.target[0]}:{self.target[1]}")
        a += ["-sf", str(self.scenario_path), "-i", self.host, "-p", str(self.port),
              "-mi", self.host, "-mp", str(self.media_port), "-m", str(self.calls),
              "-nostdin", "-trace_stat", "-stf", str(self.dir / "stats.csv"), "-fd", "1",
              "-trace_err", "-error_file", str(self.dir / "errors.log"),
              "-trace_rtt", "-rtt_freq", "1",
              "-trace_screen", "-screen_file", str(self.dir / "screen.log"),
              "-timeout", f"{int(self.timeout)}s", "-timeout_error",
              "-max_recv_loops", "10000", "-max_sched_loops", "10000"]
        if self.trace_msg:
            a += ["-trace_msg", "-message_file", str(self.dir / "messages.log")]
        if self.rate is not None:
            a += ["-r", f"{self.rate:g}", "-rp", f"{self.rate_period_ms}"]
        if self.limit is not None:
            a += ["-l", str(self.limit)]
        if self.rate_increase is not None:
            a += ["-rate_increase", f"{self.rate_increase:g}",
                  "-rate_interval", f"{self.rate_interval:g}s"]
            if self.rate_max is not None:
                # hold the top rate until -m calls are made (SIPp would quit at rate_max)
                a += ["-rate_max", f"{self.rate_max:g}", "-no_rate_quit"]
        if self.service:
            a += ["-s", self.service]
        if self.rtp_echo:
            a.append("-rtp_echo")
        return a + self.extra_args

    def start(self) -> Sipp:
        """Start SIPp; a server is ready when its SIP port is bound (checked here)."""
        self.scenario_path.write_text(self.scenario)
        self._proc = Process(self.argv(), log_path=self.dir / "sipp.out", cwd=self.dir)
        self._started = time.monotonic()
        if self.target is None:
            self._wait_bound()
        return self

    def _wait_bound(self, timeout: float = 5.0) -> None:
        # Read the kernel's UDP table instead of probing with bind(): a probe could hold
        # the port at the very moment SIPp binds it and make SIPp fail.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and not self._proc.alive():
                raise HarnessError(f"{self.name} exited at start:\n{self.diagnostics()}")
            if udp_port_bound(self.port):
                return
            time.sleep(0.02)
        raise HarnessError(f"{self.name} did not bind {self.addr}:\n{self.diagnostics()}")

    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for SIPp to finish its calls; returns the exit code (raises on timeout)."""
        assert self._proc is not None, "not started"
        try:
            self.exit_code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"{self.name} still running after {timeout} s:\n"
                               f"{self.diagnostics()}") from None
        return self.exit_code

    def stop(self) -> int | None:
        """Stop SIPp (SIGUSR1 = quit after dumping stats, then TERM/KILL)."""
        if self._proc is None:
            return None
        if self._proc.alive():
            try:
                os.killpg(self._proc.pid, signal.SIGUSR1)
                self._proc.wait(2)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        code = self._proc.stop()
        release(self.port, *range(self.media_port, self.media_port + 4))
        if self.exit_code is None:
            self.exit_code = code
        if self._final is None:
            # Keep the results readable after __exit__ removes the work dir.
            self._final = {"stats": self.stats(), "rtt": self.response_times_ms(),
                           "messages": self.messages_text(10**7), "errors": self.errors_text(10**6),
                           "output": self._proc.log_text(4000)}
        return code

    # --- results -----------------------------------------------------------------------

    def stats(self) -> dict[str, str]:
        """The last row of SIPp's statistics CSV (cumulative columns end in ``(C)``)."""
        if self._final is not None:
            return self._final["stats"]
        path = self.dir / "stats.csv"
        try:
            rows = list(csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";"))
        except OSError:
            return {}
        if len(rows) < 2:
            return {}
        return dict(zip(rows[0], rows[-1], strict=False))

    def count(self, column: str) -> int:
        """An integer statistic, e.g. ``SuccessfulCall(C)``, ``FailedCall(C)``."""
        v = self.stats().get(column, "")
        try:
            return int(v)
        except ValueError:
            return 0

    @property
    def successful(self) -> int:
        return self.count("SuccessfulCall(C)")

    @property
    def failed(self) -> int:
        return self.count("FailedCall(C)")

    def response_times_ms(self) -> list[float]:
        """Every ``rtd`` measured (ms): INVITE->200 for callers, ACK->BYE... per scenario."""
        if self._final is not None:
            return self._final["rtt"]
        out: list[float] = []
        for f in self.dir.glob("*_rtt.csv"):
            for row in f.read_text(errors="replace").splitlines()[1:]:
                parts = row.split(";")
                if len(parts) >= 2:
                    try:
                        out.append(float(parts[1]))
                    except ValueError:
                        pass
        return out

    def messages_text(self, tail: int = 30000) -> str:
        """The SIP trace (``-trace_msg``), last ``tail`` characters."""
        if self._final is not None:
            return self._final["messages"][-tail:]
        return _tail(self.dir / "messages.log", tail)

    def errors_text(self, tail: int = 10000) -> str:
        """Unexpected messages and timeouts SIPp reported."""
        if self._final is not None:
            return self._final["errors"][-tail:]
        return _tail(self.dir / "errors.log", tail)

    def diagnostics(self) -> str:
        """Exit code, stats, unexpected messages and the SIP trace, for assertion messages."""
        st = self.stats()
        keys = ("SuccessfulCall(C)", "FailedCall(C)", "FailedUnexpectedMessage(C)",
                "FailedCallRejected(C)", "FailedMaxUDPRetrans(C)", "FailedCmdNotSent(C)",
                "FailedRegexpDoesntMatch(C)", "FailedOutboundCongestion(C)",
                "FailedTimeoutOnRecv(C)", "FailedTimeoutOnSend(C)")
        summary = ", ".join(f"{k}={st[k]}" for k in keys if st.get(k, "0") not in ("", "0"))
        if self._final is not None:
            out = self._final["output"]
        else:
            out = self._proc.log_text(4000) if self._proc else ""
        return (f"--- {self.name} exit={self.exit_code} dir={self.dir} {summary}\n"
                f"--- output:\n{out}\n--- errors:\n{self.errors_text()}\n"
                f"--- messages:\n{self.messages_text()}")

    def __enter__(self) -> Sipp:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        if self._own_dir and et is None and os.environ.get("HARNESS_KEEP_LOGS") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)


def udp_port_bound(port: int) -> bool:
    """True if some UDP socket is bound to ``port`` (any address), from /proc/net/udp."""
    want = f":{port:04X}"
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        if any(line.split()[1].endswith(want) for line in lines if len(line.split()) > 1):
            return True
    return False


def _tail(path: Path, n: int) -> str:
    try:
        return path.read_bytes()[-n:].decode("utf-8", "replace")
    except OSError:
        return ""


class RtpCapture:
    """Capture loopback UDP to/from ``ports`` with dumpcap (needs capture rights; root here).

    ``with RtpCapture([port]) as cap: ...`` then ``cap.packets()``: every RTP packet seen.
    """

    def __init__(self, ports: Sequence[int], *, workdir: Path | None = None) -> None:
        if not ports:
            raise ValueError("capture needs at least one port")
        self.ports = list(ports)
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="rtpcap-"))
        self.path = self.dir / "capture.pcap"
        self._proc: Process | None = None

    def start(self, timeout: float = 5.0) -> RtpCapture:
        filt = " or ".join(f"udp port {p}" for p in self.ports)
        self._proc = Process([DUMPCAP, "-q", "-i", "lo", "-P", "-f", filt, "-w", str(self.path)],
                             log_path=self.dir / "dumpcap.log")
        deadline = time.monotonic() + timeout
        # dumpcap creates the file once the capture is open; packets before that are lost.
        while time.monotonic() < deadline:
            if not self._proc.alive():
                raise HarnessError(f"dumpcap failed:\n{self._proc.log_text()}")
            if self.path.exists() and self.path.stat().st_size >= 24:
                time.sleep(0.1)
                return self
            time.sleep(0.02)
        self.stop()
        raise HarnessError(f"dumpcap did not start:\n{self._proc.log_text()}")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(sig=signal.SIGINT)

    def packets(self) -> list[CapturedRtp]:
        """RTP packets captured so far (stop() first for a complete file)."""
        if not self.path.exists():
            return []
        return read_rtp_pcap(self.path)

    def __enter__(self) -> RtpCapture:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
