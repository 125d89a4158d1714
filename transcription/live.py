"""Live transcription workers: recogniser threads fed by bounded inboxes.

Theory of operation: this module owns the recognition threads (STYLE §4). Each
:class:`LiveWorker` is a thread with an :class:`Inbox` and the recognisers of the calls
assigned to it (both channels of a call go to the same worker). The event loop only
appends to inboxes (never blocks) and reads two floats per worker (``lag`` and
``backlog``); results go back with ``loop.call_soon_threadsafe``.

Why threads and not processes: Vosk (cffi) and CTranslate2 release the GIL while they
compute, so threads decode in parallel on both cores and share one loaded model (a
process per worker would load the model again: ~250 MB for the Korean Vosk model).
Measured in ``bench/transcription_engines.py``.

When an inbox is full (``capacity`` frames, ~2 s of audio per live stream) the frame
is refused: ``put_frame`` returns False and the service sheds the least urgent live
stream on that worker at once (see :class:`LivePolicy`), so a burst can never grow
memory or lag without bound. Control messages (stream start/stop) are always accepted;
there are at most two per stream.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from .engines import INPUT_RATE, Engine, Hypothesis, Recogniser

log = structlog.get_logger("transcription.live")

StreamKey = tuple[str, str]  # (call_id, channel)
Emit = Callable[[str, str, Hypothesis], None]  # (call_id, channel, hypothesis), thread side


class Inbox:
    """A bounded FIFO for frames plus unbounded control items, in one order."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[tuple[Any, ...]] = deque()
        self._frames = 0
        self._cond = threading.Condition()

    def put_frame(self, item: tuple[Any, ...]) -> bool:
        """Append a frame unless ``capacity`` frames are waiting (then False: dropped)."""
        with self._cond:
            if self._frames >= self.capacity:
                return False
            self._items.append(item)
            self._frames += 1
            self._cond.notify()
            return True

    def put_control(self, item: tuple[Any, ...]) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    def discard_frames(self, call_id: str) -> int:
        """Remove the waiting frames of a call (shed: its backlog must not be decoded);
        returns how many."""
        with self._cond:
            keep = deque(i for i in self._items
                         if not (i is not None and i[0] == "frame" and i[1][0] == call_id))
            n = len(self._items) - len(keep)
            self._items = keep
            self._frames -= n
            return n

    def take_all(self, timeout: float) -> list[tuple[Any, ...]]:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            items = list(self._items)
            self._items.clear()
            self._frames = 0
            return items

    def oldest(self) -> float | None:
        """Enqueue time (monotonic) of the oldest waiting frame, None if no frame waits."""
        with self._cond:
            for item in self._items:
                if item is not None and item[0] == "frame":
                    return float(item[4])
            return None

    def __len__(self) -> int:
        return self._frames


@dataclass
class _Chan:
    rec: Recogniser
    base: float  # media offset (s) of the first sample fed
    fed: int = 0  # 8 kHz samples fed, including silence inserted for gaps


class LiveWorker(threading.Thread):
    """One recognition thread. Items: ('frame', key, pcm, offset, t_enqueued),
    ('stop', key) (flush: emit finals), ('drop', call_id) (discard, no finals), None."""

    MAX_GAP = 5.0  # s of missing audio we fill with silence to keep times on the media clock

    def __init__(self, index: int, engine: Engine, emit: Emit, *, capacity: int,
                 make_recogniser: Callable[[], Recogniser] | None = None) -> None:
        super().__init__(name=f"transcription-live-{index}", daemon=True)
        self.index = index
        self.inbox = Inbox(capacity)
        self._engine = engine
        self._make = make_recogniser or engine.recogniser
        """A new recogniser per channel (the service binds the live schedule to it)."""
        self._emit = emit
        self._chans: dict[StreamKey, _Chan] = {}
        self._dropped: set[str] = set()
        self._shed: set[str] = set()
        """Calls shed by the loop (:meth:`shed`), seen by this thread before their drop
        message is reached: frames of them already taken are skipped, not decoded."""
        self.lag = 0.0
        """Age (s) of the newest frame when its batch was processed; read by the loop."""
        self.busy = 0.0
        """Seconds spent decoding (for the real-time factor)."""
        self.audio = 0.0
        """Seconds of audio decoded."""
        self.errors = 0

    def shed(self, call_id: str) -> None:
        """Loop side: stop decoding a call now. Its waiting frames leave the inbox and
        frames this thread already took are skipped, so shedding relieves an overloaded
        worker at once (not after it has decoded the victim's backlog)."""
        self._shed.add(call_id)  # a set add is atomic under the GIL
        self.inbox.discard_frames(call_id)
        self.inbox.put_control(("drop", call_id))

    def run(self) -> None:
        while True:
            items = self.inbox.take_all(timeout=0.5)
            if not items:
                self.lag = 0.0
                continue
            if not self._process(items):
                return

    def _process(self, items: list[tuple[Any, ...]]) -> bool:
        # Coalesce consecutive frames of each stream: one engine call per ~batch instead
        # of one per 20 ms frame (the per-call overhead matters when a worker is behind).
        batch: dict[StreamKey, list[tuple[bytes, float]]] = {}
        newest = 0.0
        for item in items:
            if item is None:
                self._run_batch(batch)
                for key in list(self._chans):
                    self._close(key, flush=False)
                return False
            kind = item[0]
            if kind == "frame":
                _, key, pcm, offset, t_enq = item
                if key[0] in self._dropped or key[0] in self._shed:
                    continue
                batch.setdefault(key, []).append((pcm, offset))
                newest = max(newest, t_enq)
            else:
                self._run_batch(batch)
                batch = {}
                if kind == "stop":
                    self._close(item[1], flush=True)
                elif kind == "drop":
                    self._dropped.add(item[1])
                    for key in [k for k in self._chans if k[0] == item[1]]:
                        self._close(key, flush=False)
                elif kind == "forget":
                    self._dropped.discard(item[1])
                    self._shed.discard(item[1])
        self._run_batch(batch)
        if newest:
            self.lag = time.monotonic() - newest
        return True

    def _run_batch(self, batch: dict[StreamKey, list[tuple[bytes, float]]]) -> None:
        for key, frames in batch.items():
            if key[0] in self._shed:
                continue
            ch = self._chans.get(key)
            try:
                if ch is None:
                    ch = self._chans[key] = _Chan(self._make(), frames[0][1])
                parts: list[bytes] = []
                for pcm, offset in frames:
                    gap = round((offset - ch.base) * INPUT_RATE) - ch.fed
                    if 0 < gap <= self.MAX_GAP * INPUT_RATE:
                        parts.append(bytes(2 * gap))  # lost frames: silence keeps the clock
                        ch.fed += gap
                    parts.append(pcm)
                    ch.fed += len(pcm) // 2
                audio = b"".join(parts)
                t0 = time.monotonic()
                hyps = ch.rec.accept(audio)
                self.busy += time.monotonic() - t0
                self.audio += len(audio) / (2 * INPUT_RATE)
                for h in hyps:
                    self._emit(key[0], key[1], _shift(h, ch.base))
            except Exception:  # a decoder error ends this stream's live captions only
                self.errors += 1
                log.exception("live recogniser failed", call_id=key[0], channel=key[1])
                self._chans.pop(key, None)

    def _close(self, key: StreamKey, *, flush: bool) -> None:
        ch = self._chans.pop(key, None)
        if ch is None or not flush:
            return
        try:
            for h in ch.rec.flush():
                self._emit(key[0], key[1], _shift(h, ch.base))
        except Exception:
            self.errors += 1
            log.exception("live recogniser flush failed", call_id=key[0], channel=key[1])


def _shift(h: Hypothesis, base: float) -> Hypothesis:
    return Hypothesis(h.text, h.start + base, h.end + base, h.final, h.confidence, h.words)


# -- policy (pure: no threads, no clock) -----------------------------------------------

@dataclass
class StreamInfo:
    """A call with live captions, as the policy sees it. Lower ``priority`` is more urgent."""

    call_id: str
    priority: int
    seq: int
    """Start order (later starts are shed first among equals)."""
    worker: int
    live: bool = True
    reason: str = ""


@dataclass
class LivePolicy:
    """Who keeps live captions. Decisions only; the service applies them.

    * Admission: at most ``max_streams`` live calls. A new call more urgent than the
      least urgent live call takes its place; otherwise it starts without live captions.
    * Overload: when a worker's lag exceeds ``max_lag`` seconds (or its inbox is full),
      shed the least urgent live call on that worker (highest priority number, newest
      first); shed again only after ``cooldown`` s and only if the lag kept growing.
      999 calls (priority 0) are shed only when no less urgent call is left on the worker.
    """

    max_streams: int
    max_lag: float = 1.5
    cooldown: float = 1.0
    sustain: float = 1.0
    """Lag must stay over ``max_lag`` this long before a shed (Whisper decodes in bursts,
    so a single spike is not overload); a full inbox sheds at once."""
    streams: dict[str, StreamInfo] = field(default_factory=dict)
    _seq: int = 0
    _last_shed: dict[int, tuple[float, float]] = field(default_factory=dict)
    _over_since: dict[int, float] = field(default_factory=dict)

    def live_count(self) -> int:
        return sum(1 for s in self.streams.values() if s.live)

    def admit(self, call_id: str, priority: int, workers: int) -> tuple[StreamInfo, StreamInfo | None]:
        """Register a call; returns (its info, a call shed to make room or None)."""
        self._seq += 1
        loads = [0] * max(workers, 1)
        for s in self.streams.values():
            if s.live:
                loads[s.worker] += 1
        info = StreamInfo(call_id, priority, self._seq, loads.index(min(loads)))
        self.streams[call_id] = info
        if self.max_streams <= 0:
            info.live, info.reason = False, "live transcription is off (max_live_streams = 0)"
            return info, None
        live = [s for s in self.streams.values() if s.live and s is not info]
        if len(live) < self.max_streams:
            return info, None
        victim = self._least_urgent(live)
        if victim.priority > priority:
            victim.live = False
            victim.reason = (f"live captions stopped: max_live_streams ({self.max_streams}) reached "
                             f"and a more urgent call (priority {priority}) needed the slot")
            info.worker = victim.worker
            return info, victim
        info.live = False
        info.reason = (f"no live captions: max_live_streams ({self.max_streams}) reached by calls "
                       f"at least as urgent; the final transcript follows from the recording")
        return info, None

    def remove(self, call_id: str) -> StreamInfo | None:
        return self.streams.pop(call_id, None)

    def overloaded(self, worker: int, lag: float, now: float, *, full: bool = False) -> StreamInfo | None:
        """Report a worker's lag; returns the call to shed, if any.

        After a shed the worker needs time to work off the backlog already queued, so
        the next shed waits ``cooldown`` s and then happens only if the lag is still
        growing (above the lag at the last shed): a recovering worker is left alone.
        """
        if not full and lag <= self.max_lag:
            self._last_shed.pop(worker, None)  # recovered: the next overload starts afresh
            self._over_since.pop(worker, None)
            return None
        since = self._over_since.setdefault(worker, now)
        if not full and now - since < self.sustain:
            return None
        last = self._last_shed.get(worker)
        if last is not None and (now - last[0] < self.cooldown or (lag <= last[1] and not full)):
            return None
        live = [s for s in self.streams.values() if s.live and s.worker == worker]
        if not live:
            return None
        victim = self._least_urgent(live)
        victim.live = False
        why = "inbox full" if full else f"lag {lag:.1f} s > {self.max_lag:.1f} s"
        victim.reason = (f"live captions stopped: CPU overload ({why}); less urgent calls are "
                         f"shed first; the final transcript follows from the recording")
        self._last_shed[worker] = (now, lag)
        return victim

    @staticmethod
    def _least_urgent(streams: list[StreamInfo]) -> StreamInfo:
        return max(streams, key=lambda s: (s.priority, s.seq))
