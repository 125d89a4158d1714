"""The one shared media clock of the process: a tick every ptime, on an absolute schedule.

Every stream, bridge and recording is driven from this single task instead of a timer
per call: per tick the engine pulls one frame from each jitter buffer, feeds recordings
and ``on_audio``, and sends one packet per sending stream. A single task keeps the
per-tick work O(streams) with no per-call wake-ups and makes all streams advance in
lock-step (a bridge adds no extra delay).

Deadlines are absolute (``start + n * period`` on ``loop.time()``), so there is no
drift. If the loop was late (GC, a slow callback), the missed ticks are run back to
back - at most ``max_burst`` at a time, yielding to the loop in between so received
packets are still read - and the largest gap between ticks is recorded. Ticks are
never skipped: a recording always has exactly one frame per period of wall time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

__all__ = ["MediaClock"]

log = structlog.get_logger(__name__)


class MediaClock:
    """Calls ``on_tick(n)`` every ``period`` seconds from one asyncio task."""

    def __init__(self, period: float, on_tick: Callable[[int], None], *,
                 max_burst: int = 10) -> None:
        self.period = period
        self._on_tick = on_tick
        self._max_burst = max_burst
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0
        """Ticks run so far."""
        self.late_ticks = 0
        """Ticks that ran more than one period after their deadline (caught up)."""
        self.max_gap = 0.0
        """Largest interval between two consecutive ticks, seconds (ideal: ``period``)."""
        self.max_lateness = 0.0
        """Largest delay of a tick behind its deadline, seconds."""
        self.busy = 0.0
        """Wall seconds spent inside ``on_tick`` (for load figures)."""
        self.busy_cpu = 0.0
        """CPU seconds of this thread inside ``on_tick`` (unaffected by other processes
        taking the CPU away, so comparable between runs on a shared machine)."""
        self.errors = 0
        self.behind = False
        """True while the running tick is a catch-up tick (over one period late): the
        engine then reads the sockets itself before pulling, since the loop had no turn."""

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the task (on the running loop)."""
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="media-clock")

    async def stop(self) -> None:
        """Stop the task and wait for it."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def reset_stats(self) -> None:
        """Zero the gap/lateness figures (benchmarks measure a window)."""
        self.late_ticks = 0
        self.max_gap = self.max_lateness = self.busy = self.busy_cpu = 0.0

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.period
        t0 = loop.time()
        n = 1  # tick n is due at t0 + n * period
        last = t0
        while True:
            deadline = t0 + n * period
            now = loop.time()
            if deadline > now:
                await asyncio.sleep(deadline - now)
            burst = 0
            while True:
                now = loop.time()
                deadline = t0 + n * period
                if deadline > now or burst >= self._max_burst:
                    break
                late = now - deadline
                if late > self.max_lateness:
                    self.max_lateness = late
                self.behind = late > period
                if self.behind:
                    self.late_ticks += 1
                gap = now - last
                if gap > self.max_gap:
                    self.max_gap = gap
                last = now
                cpu = time.thread_time()
                try:
                    self._on_tick(self.ticks)
                except Exception:  # one bad tick must never stop every call's audio
                    self.errors += 1
                    log.exception("media tick failed", tick=self.ticks)
                self.ticks += 1
                n += 1
                burst += 1
                self.busy += loop.time() - now
                self.busy_cpu += time.thread_time() - cpu
            if burst >= self._max_burst:
                await asyncio.sleep(0)  # let the loop read sockets before catching up more
