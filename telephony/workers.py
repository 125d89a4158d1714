"""Engine worker processes: N whole engines in child processes behind one engine API.

Theory of operation. With ``sip.engine_workers = N >= 2`` the service does not run an
:class:`~telephony.engine.Engine` itself. :class:`EngineWorkers` starts N child
processes (``python -m telephony.workers``), each a whole engine: SIP on port
``sip.port + i`` (TLS on ``sip.tls_port + i``), the i-th share of the RTP port range,
recordings in ``<recordings_dir>/w<i>`` (each engine seals, at start, the ``.part`` files
in its folder: a shared folder would let a restarted worker seal a live call of another),
its own dialog journal. In the main process :class:`EngineWorkers` implements the same
commands and reports the same :mod:`telephony.api` events, so the service neither knows
nor cares where the engine lives.

Inbound INVITEs are spread over the workers by the SIP proxy in front (Kamailio's
dispatcher, as the cluster uses): it is C, already on the path, probes each worker with
OPTIONS and stops sending to a dead one until its restart answers. Spreading in the main
process would put a Python hop (parse, forward, keep dialog state) in front of every SIP
message, on the process that the benchmark showed is short of CPU, and would hide the
caller's address from the engine's trust and NAT checks.

Ids: worker ``i`` mints call ids starting ``<prefix>w<i>-``, and the proxy mints the
leg ids of its offers with the same start, so every command goes to the worker whose
prefix the id carries: a call and its handler leg are always in one worker and media is
bridged locally. The worker maps its engine's own leg ids to the proxy's.

The wire: a socketpair per worker; each frame is a 4-byte length and a pickled list of
messages (a loop iteration's messages go in one frame). Main -> worker: ``("cmd", name,
args, kwargs)``, ``("offer", leg_id, call_id, uri, timeout, display)``, ``("dial_out",
call_id, line, number, uri, timeout)`` (a call-back: the proxy mints its call id too), ``("refuse",
{line: verdict})``, ``("stop", drain_timeout)``. Worker -> main: ``("ready", sip_port)``,
``("error", text)``, ``("ev", event)``, ``("audio", frame)``, ``("stats", stats,
counters, health)``.

The service's ``admit`` hook is synchronous and a worker cannot ask the main process in
the middle of an INVITE, so the proxy asks ``admit`` for every line after each batch of
events and every 0.25 s and pushes the verdicts to the workers (``refuse``): a burst
may put a few calls more into a full queue than an in-process engine would.

A worker that dies (EOF on its socket): its legs are reported failed/ended and its calls
ended (``CallEnded(by="system", reason=WORKER_DIED)``), as the service records a dead
node's calls; the others go on; it is restarted after ``RESTART_DELAY`` s, at most
``RESTARTS`` times in ``RESTART_WINDOW`` s. The restarted engine seals the dead one's
recordings (RecordingSealed, recovered) and sends BYE to its dialogs (journal).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from config.schema import HandlerSettings, LineSettings
from config.telephony import SipSettings
from telephony import api
from telephony.api import EngineStats, IncomingCall, TelephonyEvent
from telephony.errors import EngineError

log = structlog.get_logger("telephony.workers")

WORKER_DIED = "engine worker died"
"""``CallEnded.reason`` of the calls a dead worker held."""
RESTART_DELAY = 1.0
"""Seconds between a worker's death and its restart."""
RESTARTS = 3
"""Restarts of one worker allowed within ``RESTART_WINDOW`` s; then it stays down."""
RESTART_WINDOW = 300.0
START_TIMEOUT = 30.0
"""Seconds a worker may take to report ready."""
STATS_EVERY = 1.0
"""Seconds between two stats reports of a worker."""
ADMIT_EVERY = 0.25
"""Seconds between two pushes of the admit verdicts (also pushed after events)."""
_LEN = struct.Struct("!I")

Admit = Callable[[IncomingCall], "tuple[int, str] | None"]


# ---------------------------------------------------------------------------- pure parts
def worker_settings(sip: SipSettings, index: int, count: int) -> SipSettings:
    """Worker ``index``'s settings: its SIP (and TLS) port, its share of the RTP range
    (even-aligned, disjoint) and of ``max_calls``."""
    share = ((sip.rtp_port_max - sip.rtp_port_min + 1) // count) & ~1
    low = sip.rtp_port_min + index * share
    return dataclasses.replace(
        sip, engine_workers=1,
        port=sip.port + index if sip.port else 0,
        tls_port=sip.tls_port + index if sip.tls_port else 0,
        rtp_port_min=low, rtp_port_max=low + share - 1,
        max_calls=max(1, -(-sip.max_calls // count)))


class WorkerBook:
    """Which calls and legs each worker holds, and what to report when one dies.

    Fed the events the workers report (:meth:`seen`) and the offers the proxy makes
    (:meth:`offered`); no I/O."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        """call_id -> worker index (answered calls not yet ended)."""
        self.legs: dict[str, tuple[int, str, bool]] = {}
        """leg_id -> (worker, call_id, answered)."""
        self.answered_at: dict[str, float] = {}
        """call_id -> when the engine answered it (its recording starts then)."""

    def dialled(self, worker: int, call_id: str) -> None:
        """A call-back the proxy asked ``worker`` to dial: it holds the call from now."""
        self.calls[call_id] = worker

    def offered(self, worker: int, call_id: str, leg_id: str) -> None:
        self.legs[leg_id] = (worker, call_id, False)

    def seen(self, worker: int, e: TelephonyEvent) -> None:
        if isinstance(e, api.CallArrived):
            self.calls[e.call_id] = worker
            self.answered_at[e.call_id] = e.at
        elif isinstance(e, (api.CallEnded, api.CallCancelled)):
            self.calls.pop(e.call_id, None)
            self.answered_at.pop(e.call_id, None)
        elif isinstance(e, api.LegAnswered):
            if e.leg_id in self.legs:
                self.legs[e.leg_id] = (worker, e.call_id, True)
        elif isinstance(e, (api.LegFailed, api.LegEnded)):
            self.legs.pop(e.leg_id, None)

    def died(self, worker: int, now: float) -> list[TelephonyEvent]:
        """The events that close what ``worker`` held: calls first (so the record says
        why they ended), then their legs (a ringing one failed, an answered one ended)."""
        out: list[TelephonyEvent] = []
        for call_id, w in list(self.calls.items()):
            if w == worker:
                del self.calls[call_id]
                self.answered_at.pop(call_id, None)
                out.append(api.CallEnded(at=now, call_id=call_id, by="system",
                                         reason=WORKER_DIED))
        for leg_id, (w, call_id, answered) in list(self.legs.items()):
            if w != worker:
                continue
            del self.legs[leg_id]
            out.append(api.LegEnded(at=now, call_id=call_id, leg_id=leg_id, by="system")
                       if answered else
                       api.LegFailed(at=now, call_id=call_id, leg_id=leg_id, reason="error"))
        return out


def sum_stats(parts: Sequence[EngineStats]) -> EngineStats:
    """Counters of all workers: sums, except the worst send gap (a maximum)."""
    total = EngineStats()
    for st in parts:
        for f in dataclasses.fields(EngineStats):
            v = getattr(st, f.name)
            if f.name == "max_send_gap_ms":
                total.max_send_gap_ms = max(total.max_send_gap_ms, v)
            elif f.name == "rejected":
                for k, n in v.items():
                    total.rejected[k] = total.rejected.get(k, 0) + n
            else:
                setattr(total, f.name, getattr(total, f.name) + v)
    return total


def frame(messages: list[Any]) -> bytes:
    data = pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader) -> list[Any]:
    """One frame's messages; raises IncompleteReadError at EOF."""
    n = _LEN.unpack(await reader.readexactly(_LEN.size))[0]
    out: list[Any] = pickle.loads(await reader.readexactly(n))  # noqa: S301 - our own child
    return out


class _Outbox:
    """Messages of one loop iteration sent as one frame (fewer writes and pickles)."""

    def __init__(self, writer: asyncio.StreamWriter,
                 transform: Callable[[list[Any]], list[Any]] | None = None) -> None:
        self.writer = writer
        self.pending: list[Any] = []
        self.transform = transform
        self.hold = False
        """While True nothing is sent (a worker's events during start wait for "ready")."""

    def send(self, msg: Any) -> None:
        if not self.pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self.pending.append(msg)

    def flush(self) -> None:
        if self.hold:
            return
        msgs, self.pending = self.pending, []
        if not msgs or self.writer.is_closing():
            return
        if self.transform is not None:
            msgs = self.transform(msgs)
        self.writer.write(frame(msgs))


# ---------------------------------------------------------------------------- main side
class _Worker:
    """One child process as the main process sees it."""

    def __init__(self, index: int, prefix: str) -> None:
        self.index = index
        self.prefix = f"{prefix}w{index}-"
        self.proc: asyncio.subprocess.Process | None = None
        self.out: _Outbox | None = None
        self.reader_task: asyncio.Task[None] | None = None
        self.sip_port = 0
        self.stats = EngineStats()
        self.counters: dict[str, int] = {}
        self.health: list[tuple[str, str]] = []
        self.restarts: list[float] = []
        self.byes = 0
        """BYEs its engine sent at start to dialogs a crash had left up."""
        self.up = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class EngineWorkers:
    """``sip.engine_workers`` engines in child processes, with the engine's API.

    Construct with the keyword arguments of :class:`telephony.engine.Engine`."""

    def __init__(self, *, settings: SipSettings, lines: list[LineSettings], recordings_dir: Path,
                 on_event: Callable[[TelephonyEvent], None],
                 on_audio: Callable[[api.AudioFrame], None] | None = None,
                 handlers: Sequence[HandlerSettings] = (),
                 admit: Admit | None = None, dialog_journal: Path | None = None,
                 call_id_prefix: str = "") -> None:
        if settings.engine_workers < 2:
            raise EngineError("EngineWorkers needs sip.engine_workers >= 2")
        self.settings = settings
        self.lines = list(lines)
        self.handlers = list(handlers)
        self.recordings_dir = Path(recordings_dir)
        self._on_event = on_event
        self._on_audio = on_audio
        self._admit = admit
        self._journal = dialog_journal
        self.workers = [_Worker(i, call_id_prefix) for i in range(settings.engine_workers)]
        self.book = WorkerBook()
        self._legs = 0
        self._verdicts: dict[str, tuple[int, str] | None] = {}
        self._priority_max: int | None = None
        self._running = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ lifecycle
    @property
    def sip_port(self) -> int:
        return self.workers[0].sip_port

    @property
    def sip_ports(self) -> list[int]:
        """Every worker's SIP port (the proxy's dispatcher set)."""
        return [w.sip_port for w in self.workers]

    async def start(self) -> None:
        """Seal recordings an earlier single engine left open, start every worker and
        wait until each listens. Raises EngineError naming the worker that failed."""
        from telephony.engine.recordings import recording_sealed
        from telephony.media.recording import recover

        self.recordings_dir.mkdir(parents=True, exist_ok=True)
        for info in recover(self.recordings_dir):
            self._emit(recording_sealed(info, recovered=True))
        self._running = True
        try:
            await asyncio.gather(*(self._spawn(w) for w in self.workers))
        except BaseException:
            await self.stop()
            raise
        self._spawn_task(self._admit_loop(), "engine-workers-admit")
        log.info("engine.workers_started", sip_ports=self.sip_ports,
                 pids=[w.pid for w in self.workers])

    async def _spawn(self, w: _Worker) -> None:
        parent, child = socket.socketpair()
        try:
            w.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "telephony.workers", str(child.fileno()),
                pass_fds=(child.fileno(),))
        finally:
            child.close()
        reader, writer = await asyncio.open_connection(sock=parent)
        w.out = _Outbox(writer)
        n = len(self.workers)
        w.out.send(("init", {
            "settings": worker_settings(self.settings, w.index, n), "lines": self.lines,
            "handlers": self.handlers, "recordings_dir": self.recordings_dir / f"w{w.index}",
            "dialog_journal": (self._journal / f"w{w.index}") if self._journal else None,
            "prefix": w.prefix, "audio": self._on_audio is not None,
            "verdicts": self._verdicts, "priority_max": self._priority_max}))
        try:
            first = await asyncio.wait_for(read_frame(reader), START_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, OSError):
            first = [("error", "exited or timed out before it was ready")]
        kind = first[0][0] if first else "error"
        if kind != "ready":
            text = first[0][1] if first and len(first[0]) > 1 else "?"
            writer.close()
            await self._reap(w)
            raise EngineError(f"engine worker {w.index} did not start: {text}")
        w.sip_port, w.up = first[0][1], True
        self._deliver(w, first[1:])
        w.reader_task = self._spawn_task(self._read(w, reader), f"engine-worker-{w.index}")

    def _spawn_task(self, coro: Any, name: str) -> asyncio.Task[Any]:
        t = asyncio.create_task(coro, name=name)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    async def _reap(self, w: _Worker, grace: float = 5.0) -> None:
        if w.proc is None or w.proc.returncode is not None:
            return
        try:
            await asyncio.wait_for(w.proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                w.proc.kill()
            await w.proc.wait()

    async def _read(self, w: _Worker, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                self._deliver(w, await read_frame(reader))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        w.up = False
        if w.out is not None:
            w.out.writer.close()
        await self._reap(w)
        code = w.proc.returncode if w.proc is not None else None
        if not self._running:
            return
        now = time.time()
        lost = self.book.died(w.index, now)
        log.error("engine.worker_died", worker=w.index, pid=w.pid, returncode=code,
                  calls_ended=sum(isinstance(e, api.CallEnded) for e in lost))
        for e in lost:
            self._emit(e)
        w.stats, w.health = EngineStats(), [("engine", f"worker {w.index} down")]
        self._spawn_task(self._restart(w), f"engine-worker-{w.index}-restart")

    async def _restart(self, w: _Worker) -> None:
        now = time.monotonic()
        w.restarts = [t for t in w.restarts if now - t < RESTART_WINDOW]
        if len(w.restarts) >= RESTARTS:
            log.error("engine.worker_not_restarted", worker=w.index,
                      why=f"{RESTARTS} restarts in {RESTART_WINDOW:.0f} s")
            return
        w.restarts.append(now)
        await asyncio.sleep(RESTART_DELAY)
        if not self._running:
            return
        try:
            await self._spawn(w)
        except Exception as exc:  # noqa: BLE001 - try again within the budget
            log.error("engine.worker_restart_failed", worker=w.index, error=str(exc))
            self._spawn_task(self._restart(w), f"engine-worker-{w.index}-restart")
            return
        w.health = []
        log.warning("engine.worker_restarted", worker=w.index, pid=w.pid, sip_port=w.sip_port)

    def _deliver(self, w: _Worker, msgs: list[Any]) -> None:
        events = False
        for msg in msgs:
            kind = msg[0]
            if kind == "ev":
                self.book.seen(w.index, msg[1])
                self._emit(msg[1])
                events = True
            elif kind == "audio":
                if self._on_audio is not None:
                    for f in msg[1]:
                        self._on_audio(f)
            elif kind == "stats":
                w.stats, w.counters, w.health, w.byes = msg[1], msg[2], msg[3], msg[4]
        if events:
            self._push_verdicts()

    def _emit(self, e: TelephonyEvent) -> None:
        try:
            self._on_event(e)
        except Exception:  # the service never raises; a bug must not stop the reader
            log.exception("engine.workers_event_failed", event=type(e).__name__)

    async def _admit_loop(self) -> None:
        while True:
            await asyncio.sleep(ADMIT_EVERY)
            self._push_verdicts()

    def _push_verdicts(self) -> None:
        if self._admit is None:
            return
        verdicts: dict[str, tuple[int, str] | None] = {}
        for line in self.lines:
            try:
                verdicts[line.name] = self._admit(IncomingCall(
                    line=line.name, dialled="", caller="", display_name="", source=""))
            except Exception:  # noqa: BLE001 - a bug in the hook admits
                log.exception("engine.workers_admit_failed", line=line.name)
                verdicts[line.name] = None
        if verdicts != self._verdicts:
            self._verdicts = verdicts
            self._broadcast(("refuse", verdicts))

    def _broadcast(self, msg: Any) -> None:
        for w in self.workers:
            if w.up and w.out is not None:
                w.out.send(msg)

    async def stop(self, drain_timeout: float = 0.0, *, bye_grace: float = 1.0) -> None:
        """Stop every worker (each hangs up its calls: CallEnded ``shutdown``)."""
        self._running = False
        for w in self.workers:
            if w.up and w.out is not None:
                w.out.send(("stop", drain_timeout, bye_grace))
        readers = [w.reader_task for w in self.workers if w.reader_task is not None]
        if readers:  # the events of the shutdown arrive until each worker closes
            await asyncio.wait(readers, timeout=drain_timeout + bye_grace + 10.0)
        for t in list(self._tasks):  # a restart in progress too, before its child is killed
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
                await w.proc.wait()

    # ------------------------------------------------------------------ commands
    def _owner(self, some_id: str) -> _Worker | None:
        for w in self.workers:
            if some_id.startswith(w.prefix):
                return w
        return None

    def _send(self, some_id: str, name: str, *args: Any, **kwargs: Any) -> None:
        w = self._owner(some_id)
        if w is None:
            raise EngineError(f"no such call or leg: {some_id!r}")
        if not w.up or w.out is None:
            # its calls were ended when it died; a late command for one is moot
            log.info("engine.worker_down_command_dropped", worker=w.index, command=name,
                     id=some_id)
            return
        w.out.send(("cmd", name, args, kwargs))

    def offer(self, call_id: str, handler_uri: str, *, timeout: float,
              caller_display: str = "") -> str:
        """Ring a handler's phone from the worker that holds the call; returns the leg id
        (minted here; a failure to start arrives as LegFailed ``error``)."""
        w = self._owner(call_id)
        if w is None or call_id not in self.book.calls:
            raise EngineError(f"no such call: {call_id!r}")
        if not w.up or w.out is None:
            raise EngineError(f"engine worker {w.index} holding {call_id!r} is down")
        self._legs += 1
        leg_id = f"{w.prefix}p{self._legs}"
        self.book.offered(w.index, call_id, leg_id)
        w.out.send(("offer", leg_id, call_id, handler_uri, timeout, caller_display))
        return leg_id

    def cancel_offer(self, leg_id: str) -> None:
        self._send(leg_id, "cancel_offer", leg_id)

    def bridge(self, call_id: str, leg_id: str) -> None:
        self._send(call_id, "bridge", call_id, leg_id)

    def unbridge(self, call_id: str) -> None:
        self._send(call_id, "unbridge", call_id)

    def play(self, call_id: str, prompt: str) -> None:
        self._send(call_id, "play", call_id, prompt)

    def hold(self, call_id: str, on: bool) -> None:
        self._send(call_id, "hold", call_id, on)

    def hangup(self, call_id: str, reason: str = "") -> None:
        self._send(call_id, "hangup", call_id, reason)

    def consult_hold(self, call_id: str) -> None:
        self._send(call_id, "consult_hold", call_id)

    def consult(self, call_id: str, leg_id: str, step: str) -> None:
        self._send(call_id, "consult", call_id, leg_id, step)

    def set_accepting(self, *, priority_max: int | None) -> None:
        self._priority_max = priority_max
        for w in self.workers:
            if w.up and w.out is not None:
                w.out.send(("cmd", "set_accepting", (), {"priority_max": priority_max}))

    def monitor(self, call_id: str, leg_id: str, mode: str) -> float | None:
        """Set what a supervisor leg hears (see :meth:`telephony.engine.Engine.monitor`).
        Checked here: the mode, and that the leg is an answered leg of this call; the
        worker's own refusal (no handler bridged, on hold) is only logged. Returns the
        recording offset from the answer time (wall clock, not the media clock)."""
        from telephony.engine.monitor import MODES

        if mode not in MODES:
            raise EngineError(f"monitor mode must be one of {', '.join(MODES)}, got {mode!r}")
        leg = self.book.legs.get(leg_id)
        if leg is None or leg[1] != call_id or not leg[2]:
            raise EngineError(f"leg {leg_id!r} of {call_id!r} is not an answered supervisor leg")
        self._send(call_id, "monitor", call_id, leg_id, mode)
        return self._offset(call_id)

    def end_monitor(self, call_id: str) -> float | None:
        if call_id not in self.book.calls:
            return None
        self._send(call_id, "end_monitor", call_id)
        return self._offset(call_id)

    def _offset(self, call_id: str) -> float | None:
        at = self.book.answered_at.get(call_id)
        return round(max(0.0, time.time() - at), 3) if at is not None else None

    def dial_out(self, line_name: str, number: str, handler_uri: str, *,
                 timeout: float = 60.0) -> str:
        """Call a caller back from the worker holding fewest calls; returns the call id
        (minted here). What the engine would refuse at once is refused here; a failure
        after that ends the call (CallEnded by caller, ``dial-out failed: ...``)."""
        if not any(ln.name == line_name for ln in self.lines):
            raise EngineError(f"no line {line_name!r}")
        if not number or not all(ch.isdigit() or ch == "+" for ch in number):
            raise EngineError(f"cannot dial {number!r}")
        if not self.settings.proxy:
            raise EngineError("dialling out needs sip.proxy (the trunk)")
        up = [w for w in self.workers if w.up and w.out is not None]
        if not up:
            raise EngineError("no engine worker is up")
        held = collections.Counter(self.book.calls.values())
        w = min(up, key=lambda x: held[x.index])
        self._legs += 1
        call_id = f"{w.prefix}d{self._legs}"
        self.book.dialled(w.index, call_id)
        assert w.out is not None
        w.out.send(("dial_out", call_id, line_name, number, handler_uri, timeout))
        return call_id

    def recover_recording(self, call_id: str) -> bool:
        """As :meth:`telephony.engine.Engine.recover_recording`, in the worker's folder."""
        from telephony.engine.recordings import find_recording, recording_sealed

        w = self._owner(call_id)
        folders = [self.recordings_dir / f"w{w.index}"] if w else []
        for folder in [*folders, self.recordings_dir]:
            info = find_recording(folder, call_id)
            if info is not None:
                self._emit(recording_sealed(info, recovered=True))
                return True
        return False

    # ------------------------------------------------------------------ state
    def health(self) -> list[tuple[str, str]]:
        return [h for w in self.workers for h in w.health]

    @property
    def stats(self) -> EngineStats:
        return sum_stats([w.stats for w in self.workers])

    @property
    def sip_counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for w in self.workers:
            for k, v in w.counters.items():
                out[k] = max(out.get(k, 0), v) if k.startswith("max_") else out.get(k, 0) + v
        return out

    @property
    def registrations(self) -> dict[str, bool]:
        return {}

    @property
    def interrupted_byes(self) -> int:
        return sum(w.byes for w in self.workers)


# ---------------------------------------------------------------------------- worker side
class _WorkerEngine:
    """The child's side: an Engine driven by the frames of the main process."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.out = _Outbox(writer, transform=self._translate)
        self.out.hold = True  # until the engine has started: "ready" goes first
        self.verdicts: dict[str, tuple[int, str] | None] = {}
        self.engine: Any = None
        self.to_proxy: dict[str, str] = {}
        """The engine's id of an offered leg or a dialled call -> the proxy's."""
        self.to_engine: dict[str, str] = {}
        self.audio: list[api.AudioFrame] = []

    def admit(self, incoming: IncomingCall) -> tuple[int, str] | None:
        return self.verdicts.get(incoming.line)

    def _translate(self, msgs: list[Any]) -> list[Any]:
        """At flush time: events name the proxy's leg ids (an offer's engine id is known
        only once ``offer`` returned, and it may have reported events before)."""
        out: list[Any] = []
        for m in msgs:
            if m[0] == "ev":
                changes = {k: self.to_proxy[v] for k in ("call_id", "leg_id")
                           if (v := getattr(m[1], k, None)) is not None and v in self.to_proxy}
                if changes:
                    m = ("ev", dataclasses.replace(m[1], **changes))
            out.append(m)
        if self.audio:
            out.append(("audio", self.audio))
            self.audio = []
        return out

    def on_event(self, e: TelephonyEvent) -> None:
        self.out.send(("ev", e))

    def on_audio(self, f: api.AudioFrame) -> None:
        if not self.audio and not self.out.pending:
            asyncio.get_running_loop().call_soon(self.out.flush)
        self.audio.append(f)

    async def run(self) -> int:
        from telephony.engine import Engine
        from telephony.runtime import prioritise_this_thread, tune_gc

        init = dict((await read_frame(self.reader))[0][1])
        self.verdicts = init["verdicts"]
        prefix = init["prefix"]
        try:
            self.engine = Engine(settings=init["settings"], lines=init["lines"],
                                 handlers=init["handlers"],
                                 recordings_dir=init["recordings_dir"],
                                 on_event=self.on_event,
                                 on_audio=self.on_audio if init["audio"] else None,
                                 admit=self.admit, dialog_journal=init["dialog_journal"],
                                 call_id_prefix=prefix)
            await asyncio.to_thread(Path(init["recordings_dir"]).mkdir, parents=True,
                                    exist_ok=True)
            await self.engine.start()
        except Exception as exc:  # noqa: BLE001 - reported to the main process
            self.out.pending.insert(0, ("error", f"{type(exc).__name__}: {exc}"))
            self.out.hold = False
            self.out.flush()
            await self.out.writer.drain()
            return 1
        if init["priority_max"] is not None:
            self.engine.set_accepting(priority_max=init["priority_max"])
        self.out.pending.insert(0, ("ready", self.engine.sip_port))
        self.out.hold = False
        self.out.flush()
        tune_gc()  # as serve does for its own process (telephony.runtime)
        prioritise_this_thread()
        stats = asyncio.create_task(self._stats_loop())
        drain, grace = 0.0, 1.0
        try:
            while True:
                msgs = await read_frame(self.reader)
                stop = next((m for m in msgs if m[0] == "stop"), None)
                for m in msgs:
                    if m[0] != "stop":
                        self._command(m)
                if stop is not None:
                    drain, grace = stop[1], stop[2]
                    break
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            log.warning("engine.worker_parent_gone", prefix=prefix)
        stats.cancel()
        await self.engine.stop(drain_timeout=drain, bye_grace=grace)
        self.out.flush()
        with contextlib.suppress(ConnectionError, OSError):
            await self.out.writer.drain()
        self.out.writer.close()
        return 0

    def _command(self, m: Any) -> None:
        try:
            if m[0] == "refuse":
                self.verdicts = m[1]
            elif m[0] == "offer":
                _, leg_id, call_id, uri, timeout, display = m
                try:
                    real = self.engine.offer(call_id, uri, timeout=timeout,
                                             caller_display=display)
                except EngineError as exc:
                    log.warning("engine.worker_offer_failed", call_id=call_id, error=str(exc))
                    self.on_event(api.LegFailed(at=time.time(), call_id=call_id,
                                                leg_id=leg_id, reason="error"))
                    return
                self.to_proxy[real], self.to_engine[leg_id] = leg_id, real
            elif m[0] == "dial_out":
                _, call_id, line_name, number, uri, timeout = m
                try:
                    real = self.engine.dial_out(line_name, number, uri, timeout=timeout)
                except EngineError as exc:
                    log.warning("engine.worker_dial_out_failed", call_id=call_id, error=str(exc))
                    self.on_event(api.CallEnded(at=time.time(), call_id=call_id, by="caller",
                                                reason=f"dial-out failed: {exc}"))
                    return
                self.to_proxy[real], self.to_engine[call_id] = call_id, real
            elif m[0] == "cmd":
                _, name, args, kwargs = m
                args = tuple(self.to_engine.get(a, a) if isinstance(a, str) else a
                             for a in args)
                getattr(self.engine, name)(*args, **kwargs)
        except EngineError as exc:  # a call that ended meanwhile: as in-process, moot
            log.info("engine.worker_command_failed", command=m[:2], error=str(exc))
        except Exception:  # noqa: BLE001 - a bug in one command must not stop the worker
            log.exception("engine.worker_command_crashed", command=m[:2])

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_EVERY)
            e = self.engine
            self.out.send(("stats", dataclasses.replace(e.stats, rejected=dict(e.stats.rejected)),
                           dict(e.sip_counters), e.health(), e.interrupted_byes))
            # forget the leg ids of legs long gone (the engine unlinks them too)
            if len(self.to_proxy) > 4 * (len(e._legs) + len(e._calls) + 64):
                live = set(e._legs) | set(e._calls)
                for real in [r for r in self.to_proxy if r not in live]:
                    self.to_engine.pop(self.to_proxy.pop(real), None)


async def _child(fd: int) -> int:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    return await _WorkerEngine(reader, writer).run()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m telephony.workers FD``: run one engine worker on socket ``FD``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m telephony.workers FD (started by EngineWorkers)",
              file=sys.stderr)
        return 2
    # The main process stops its workers; Ctrl-C in a terminal reaches the whole group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    level = os.environ.get("CONTROLROOM_WORKER_LOG_LEVEL", "info").upper()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso"),
                    structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level, 20)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    return asyncio.run(_child(int(args[0])))


if __name__ == "__main__":
    raise SystemExit(main())
