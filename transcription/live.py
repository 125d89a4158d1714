"""Live transcription: a pool of recogniser threads sharing every live stream.

Theory of operation: this module owns the recognition threads (STYLE §4). A
:class:`LivePool` runs ``threads`` threads over one :class:`StreamQueue`: each channel
of each live call is a *stream* with its own FIFO of frames and control items. A stream
with work waiting is in a ready line (round robin, each stream at most once); a free
thread takes the stream at the head of the line with everything it has waiting, feeds
its recogniser, and puts it back at the end of the line if more came meanwhile. A
stream is worked on by one thread at a time (its recogniser is not thread-safe, its
captions stay in order), but no stream is tied to a thread.

Why not a thread per group of calls (as before issue 13): a Whisper caption is one
decode of the whole utterance as it ends (0.1-1 s of CPU for a 10 s utterance). A
thread that owned five calls decoded them one after the other, so one long utterance
held up the captions of the four other calls on that thread while the other thread
could be idle (head-of-line blocking), and the lag of the stuck thread shed a call.
In the pool a long decode holds up its own stream only; the other streams go to
whichever thread is free.

The event loop only appends to the queue (never blocks) and reads its lag; results go
back with ``loop.call_soon_threadsafe``. Why threads and not processes: Vosk (cffi) and
CTranslate2 release the GIL while they compute, so threads decode in parallel on both
cores and share one loaded model (a process per worker would load the model again:
~250 MB for the Korean Vosk model). Measured in ``bench/transcription_engines.py``.

When the queue is full (``capacity`` frames: ~2 s of audio for every live stream) the
frame is refused: ``put_frame`` returns False and the service sheds the least urgent
live call at once (see :class:`LivePolicy`), so a burst can never grow memory or lag
without bound. Control messages (stream stop/forget) are always accepted; there are at
most two per stream.
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
Item = tuple[Any, ...]
"""('frame', pcm, offset, t_enqueued) | ('stop',) (flush: emit finals) | ('forget',)."""


@dataclass
class _Stream:
    items: deque[Item] = field(default_factory=deque)
    frames: int = 0
    queued: bool = False  # in the ready line
    running: bool = False  # a thread has taken it
    shed: bool = False  # shed by the loop: frames are ignored, no finals
    ready_since: float = 0.0  # monotonic time it joined the ready line (waits for a thread)


class StreamQueue:
    """The frames and control items of every live stream, and the order streams are
    served in. Thread-safe (one condition); no decoding, no clock of its own."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._streams: dict[StreamKey, _Stream] = {}
        self._ready: deque[StreamKey] = deque()
        self._frames = 0
        self._closed = False
        self._cond = threading.Condition()

    def _push(self, key: StreamKey, st: _Stream, item: Item, now: float = 0.0) -> None:
        st.items.append(item)
        if not st.queued and not st.running:
            st.queued, st.ready_since = True, now
            self._ready.append(key)
            self._cond.notify()

    def put_frame(self, key: StreamKey, pcm: bytes, offset: float, t_enq: float) -> bool:
        """Append a frame unless ``capacity`` frames wait in all (then False: dropped).
        Frames of a shed stream are ignored (True: nothing is wrong with the queue)."""
        with self._cond:
            if self._frames >= self.capacity:
                return False
            st = self._streams.get(key)
            if st is None:
                st = self._streams[key] = _Stream()
            if st.shed:
                return True
            self._push(key, st, ("frame", pcm, offset, t_enq), t_enq)
            st.frames += 1
            self._frames += 1
            return True

    def stop(self, key: StreamKey) -> None:
        """The stream ends: after its waiting frames, flush its recogniser (finals)."""
        with self._cond:
            st = self._streams.get(key)
            if st is not None and not st.shed:
                self._push(key, st, ("stop",))

    def forget(self, call_id: str) -> None:
        """The call is over: remove its streams once their waiting items are done."""
        with self._cond:
            for key in [k for k in self._streams if k[0] == call_id]:
                st = self._streams[key]
                if st.running or st.queued:
                    self._push(key, st, ("forget",))
                else:
                    del self._streams[key]

    def shed(self, call_id: str) -> int:
        """Stop decoding a call now: its waiting frames leave the queue (the threads must
        not decode the victim's backlog before the relief shows) and later frames are
        ignored; a decode in progress finishes (its result is not published). Returns
        how many frames were discarded."""
        n = 0
        with self._cond:
            for key in [k for k in self._streams if k[0] == call_id]:
                st = self._streams[key]
                st.shed = True
                n += st.frames
                self._frames -= st.frames
                st.frames = 0
                st.items = deque(i for i in st.items if i[0] == "forget")
        return n

    def take(self, timeout: float) -> tuple[StreamKey, list[Item], bool, float] | None:
        """The next stream in line with all its waiting items, whether it is shed and
        since when it waited for a thread; None after ``timeout`` s with nothing to do
        or once closed. The stream is the caller's until :meth:`done`."""
        with self._cond:
            if not self._ready and not self._closed:
                self._cond.wait(timeout)
            if self._closed or not self._ready:
                return None
            key = self._ready.popleft()
            st = self._streams[key]
            st.queued, st.running = False, True
            items = list(st.items)
            st.items.clear()
            self._frames -= st.frames
            st.frames = 0
            return key, items, st.shed, st.ready_since

    def done(self, key: StreamKey, now: float, *, remove: bool = False) -> bool:
        """A thread has finished a stream's items at ``now``; back in line if more came
        meanwhile (waiting for a thread from ``now``: until then they waited for this
        stream's own decode). ``remove``: a forget was among them. Returns whether the
        stream was shed."""
        with self._cond:
            st = self._streams.get(key)
            if st is None:
                return True
            st.running = False
            if remove:
                del self._streams[key]
                return st.shed
            if st.items and not st.queued:
                st.queued, st.ready_since = True, now
                self._ready.append(key)
                self._cond.notify()
            return st.shed

    def oldest(self) -> float | None:
        """Since when (monotonic) the longest-waiting stream with frames has waited for
        a thread; None if none waits. Frames that arrive while a thread decodes their
        stream wait for that decode, not for a thread, and are not counted until it
        ends: one long utterance is not overload, streams waiting behind busy threads
        are."""
        with self._cond:
            times = [st.ready_since for st in self._streams.values() if st.queued and st.frames]
            return min(times) if times else None

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Every waiting :meth:`take` returns None now, and every later one."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def streams(self) -> int:
        with self._cond:
            return len(self._streams)

    def __len__(self) -> int:
        return self._frames


@dataclass
class _Chan:
    rec: Recogniser
    base: float  # media offset (s) of the first sample fed
    fed: int = 0  # 8 kHz samples fed, including silence inserted for gaps


class LivePool:
    """``threads`` recognition threads over one :class:`StreamQueue` (see the module
    docstring). The loop calls :meth:`put_frame`, :meth:`stop_stream`, :meth:`forget`,
    :meth:`shed` and :meth:`lag`; none of them blocks on a decode."""

    MAX_GAP = 5.0  # s of missing audio we fill with silence to keep times on the media clock

    def __init__(self, threads: int, engine: Engine, emit: Emit, *, capacity: int,
                 make_recogniser: Callable[[], Recogniser] | None = None) -> None:
        self.queue = StreamQueue(capacity)
        self._make = make_recogniser or engine.recogniser
        """A new recogniser per channel (the service binds the live schedule to it)."""
        self._emit = emit
        self._chans: dict[StreamKey, _Chan] = {}
        """Recogniser state per stream; an entry is touched only by the thread that has
        taken its stream from the queue (the queue hands a stream to one thread)."""
        self._threads = [threading.Thread(target=self._run, name=f"transcription-live-{i}",
                                          daemon=True) for i in range(max(1, threads))]
        self._last_lag = 0.0
        self.busy = 0.0
        """Seconds spent in the recognisers (for the real-time factor)."""
        self.audio = 0.0
        """Seconds of audio fed to them."""
        self.errors = 0

    @property
    def threads(self) -> int:
        return len(self._threads)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def close(self, timeout: float = 10.0) -> None:
        """Blocking: stop the threads (a decode in progress finishes first; waiting
        frames are not decoded, no finals are flushed)."""
        self.queue.close()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout)
        self._chans.clear()

    # -- loop side ---------------------------------------------------------------------
    def put_frame(self, key: StreamKey, pcm: bytes, offset: float, t_enq: float) -> bool:
        return self.queue.put_frame(key, pcm, offset, t_enq)

    def stop_stream(self, key: StreamKey) -> None:
        self.queue.stop(key)

    def forget(self, call_id: str) -> None:
        self.queue.forget(call_id)

    def shed(self, call_id: str) -> None:
        """Stop decoding a call now (see :meth:`StreamQueue.shed`)."""
        self.queue.shed(call_id)

    def lag(self, now: float) -> float:
        """Seconds the pool is behind: how long the longest-waiting stream has waited
        for a thread (:meth:`StreamQueue.oldest`), or the wait of the last stream taken
        when none waits (0 once idle)."""
        oldest = self.queue.oldest()
        return max(self._last_lag, now - oldest if oldest is not None else 0.0)

    # -- thread side -------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            got = self.queue.take(timeout=0.5)
            if got is None:
                if self.queue.closed:
                    return
                self._last_lag = 0.0  # idle
                continue
            key, items, shed, since = got
            if items and items[0][0] == "frame":
                self._last_lag = time.monotonic() - since  # how long it waited for a thread
            remove = self._process(key, items, shed)
            if self.queue.done(key, time.monotonic(), remove=remove):
                self._chans.pop(key, None)  # shed: no finals, recogniser state dropped

    def _process(self, key: StreamKey, items: list[Item], shed: bool) -> bool:
        """Feed a stream's items in order; returns True when it is to be forgotten."""
        frames: list[Item] = []
        remove = False
        for item in items:
            kind = item[0]
            if kind == "frame":
                if not shed:
                    frames.append(item)
                continue
            self._feed(key, frames)
            frames = []
            if kind == "stop":
                self._close(key, flush=not shed)
            elif kind == "forget":
                self._close(key, flush=False)
                remove = True
        self._feed(key, frames)
        return remove

    def _feed(self, key: StreamKey, frames: list[Item]) -> None:
        # Coalesce the stream's waiting frames: one engine call per run instead of one
        # per 20 ms frame (the per-call overhead matters when the pool is behind).
        if not frames:
            return
        ch = self._chans.get(key)
        try:
            if ch is None:
                ch = self._chans[key] = _Chan(self._make(), frames[0][2])
            parts: list[bytes] = []
            for _, pcm, offset, _t in frames:
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
        except Exception:  # a decoder error restarts this stream's recogniser only
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
