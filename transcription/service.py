"""TranscriptionService: live captions during calls, final transcripts after them.

Theory of operation
-------------------
* Everything public is called on the event loop and returns at once. ``feed`` costs an
  append to a bounded inbox (see :mod:`transcription.live`); engines run in threads.
* Live: ``live_start`` asks :class:`~transcription.live.LivePolicy` whether the call
  gets captions (``max_live_streams``; lower priority number = more urgent, as in
  ``LineSettings.priority``). Every live stream goes to one pool of ``workers`` threads
  (:class:`~transcription.live.LivePool`: a free thread takes whichever stream has
  audio waiting, so one long decode does not hold up other calls). A monitor task
  checks the pool's lag every 0.25 s and sheds the least urgent live call when it
  exceeds 1.5 s; a full queue sheds at once.
  A shed or refused call gets a ``CallFlagged(flag="live_transcript_off")`` event whose
  ``detail`` says why, so the desk can show "no live captions" instead of silence.
  Results are published as ``TranscriptSegment`` (partials and finals) on the loop.
* Final: ``enqueue_final`` writes a job row (durable: it survives a restart; jobs found
  ``running`` at start go back to ``queued``). ``final_jobs`` job threads (2: one core
  each), reniced to +10 and pausing while live workers lag, transcribe recordings (999s
  first), store the transcript and FTS rows, then ``TranscriptFinal`` is published on
  the loop. Live Whisper captions decode each utterance once as it ends unless
  ``live_partials`` asks for partials (figures: ``bench/transcription_capacity.py``). With ``engine = "none"``
  jobs wait in the queue (``retranscribe`` or a later start with an engine takes them).
  Jobs are claimed under a lease (:mod:`transcription.jobs`), so ``controlroom worker``
  processes may take them too; with ``finals = "external"`` only they do.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog

from callevents import CallFlagged, DomainEvent, TranscriptFinal, TranscriptSegment
from config.schema import TranscriptionSettings
from store.db import Database
from telephony.api import AudioFrame

from . import jobs, store
from .decoding import options_from
from .engines import Engine, Hypothesis, Interrupted, load_engine, same_whisper_model
from .errors import AudioError
from .live import LivePolicy, LivePool, StreamInfo
from .offline import lower_thread_priority, run_job

log = structlog.get_logger("transcription")

LIVE_OFF_FLAG = "live_transcript_off"
"""``CallFlagged.flag`` when a call has (or loses) no live captions; ``detail`` says why."""


class TranscriptionService:
    """See the module docstring. ``publish`` is called on the loop with DomainEvents."""

    def __init__(self, *, settings: TranscriptionSettings, db: Database,
                 publish: Callable[[DomainEvent], Any], engine: Engine | None = None,
                 max_lag: float = 1.5, inbox_seconds: float = 2.0,
                 job_poll: float = 5.0, node: str | None = None) -> None:
        self.settings = settings
        self._node = node
        """Take only jobs of calls recorded by this node (a shared store: each node's
        recordings are on its own disk; ``controlroom worker`` takes the others)."""
        self._db = db
        self._publish = publish
        self._engine = engine
        self._pool: LivePool | None = None
        self._policy = LivePolicy(max_streams=settings.max_live_streams if settings.live else 0,
                                  max_lag=max_lag)
        self._inbox_seconds = inbox_seconds
        self._job_poll = job_poll
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._executor: ThreadPoolExecutor | None = None
        self._pending: set[asyncio.Future[Any]] = set()
        self._worker = jobs.worker_id("serve")
        """Who holds this service's jobs (``transcription_jobs.worker``)."""
        self._heartbeat: jobs.Heartbeat | None = None
        self._finals = getattr(settings, "finals", "local")
        self._lease = getattr(settings, "job_lease", jobs.LEASE)
        self.stats = {"frames_in": 0, "frames_dropped": 0, "frames_ignored": 0, "frames_bad": 0,
                      "segments_published": 0, "streams_shed": 0, "finals_done": 0,
                      "finals_failed": 0}
        """Counters for /metrics."""

    # -- lifecycle ------------------------------------------------------------------
    @property
    def engine(self) -> Engine | None:
        return self._engine

    async def start(self) -> None:
        """Migrate, recover interrupted jobs, load the model (in a thread: seconds) and
        start the workers. Raises :class:`~transcription.errors.ModelError` with what is
        missing when the configured model is unusable."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        # A migration may reindex every stored transcript once (seconds to minutes on a
        # large store): off the loop, which already runs the SIP engine's timers.
        # The force's gazetteer (hotwords) also feeds the index: a place name heard wrong
        # is still found by its real name (marked, ranked after exact hits).
        gazetteer = list(getattr(self.settings, "hotwords", ()) or ())
        await asyncio.to_thread(store.migrate, self._db, gazetteer=gazetteer)
        jobs.migrate(self._db)
        recovered = jobs.recover(self._db)
        if recovered:
            log.info("final transcription jobs recovered", count=recovered)
        s = self.settings
        live_model = getattr(s, "live_model", "")
        split = (self._engine is None and s.engine == "whisper" and bool(live_model)
                 and not same_whisper_model(live_model, s.model))
        need = self._finals == "local" or (s.live and s.max_live_streams > 0)
        final_jobs = max(1, int(getattr(s, "final_jobs", 1)))
        if self._engine is None and s.engine != "none" and need:
            self._engine = await asyncio.to_thread(
                load_engine, s.engine, s.model, language=s.language,
                replicas=final_jobs if split else s.workers + final_jobs,
                options=options_from(s))
        live_engine = self._engine
        if split and s.live and s.max_live_streams > 0:
            # Captions must keep up with speech, finals may take longer: a faster model
            # for the live workers (one replica each), the configured one for finals.
            live_engine = await asyncio.to_thread(
                load_engine, s.engine, live_model, language=s.language,
                replicas=max(1, s.workers), options=options_from(s))
        if live_engine is not None and s.live and s.max_live_streams > 0:
            # ~inbox_seconds of audio for every live stream (two channels per call).
            capacity = int(self._inbox_seconds * 50 * 2 * max(1, s.max_live_streams))
            make = live_engine.recogniser
            if getattr(live_engine, "name", "") == "whisper":
                # Whisper re-decodes the utterance for each partial caption: how often is
                # the main cost of live captions (bench/transcription_capacity.py).
                make = functools.partial(live_engine.recogniser,  # type: ignore[call-arg]
                                         partial_every=getattr(s, "live_partials", 0.5))
            # One pool of threads for all live streams (no call tied to a thread: a long
            # decode holds up its own stream only; see transcription.live).
            self._pool = LivePool(max(1, s.workers), live_engine, self._emit_threadsafe,
                                  capacity=capacity, make_recogniser=make)
            self._pool.start()
            self._tasks.append(asyncio.create_task(self._monitor(), name="transcription-monitor"))
        if self._engine is not None and self._finals == "local":
            self._heartbeat = jobs.Heartbeat(self._db, self._worker, lease=self._lease).start()
            # final_jobs recordings at once, each on its own model replica and thread: one
            # job thread uses one core (CTranslate2 scales better across jobs than
            # across threads of one job), so on 2 cores finals of calls ended together
            # need 2 to keep up (bench/transcription_capacity.py).
            self._executor = ThreadPoolExecutor(final_jobs, thread_name_prefix="transcription-final",
                                                initializer=lower_thread_priority)
            for i in range(final_jobs):
                self._tasks.append(asyncio.create_task(self._jobs(), name=f"transcription-jobs-{i}"))
        log.info("transcription started", engine=s.engine,
                 model=self._engine.model if self._engine else "",
                 live_model=live_engine.model if live_engine else "",
                 workers=self._pool.threads if self._pool else 0)

    async def stop(self) -> None:
        """Stop workers and the job thread; a job in progress goes back to the queue."""
        self._stopping = True
        self._wake.set()
        for t in self._tasks:
            if t.get_name() == "transcription-monitor":
                t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._pool is not None:
            await asyncio.to_thread(self._pool.close, 10.0)
            self._pool = None
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, True)
            self._executor = None
        if self._heartbeat is not None:
            await asyncio.to_thread(self._heartbeat.stop)
            self._heartbeat = None

    # -- live -----------------------------------------------------------------------
    def live_start(self, call_id: str, *, priority: int) -> None:
        """Start live captions for a call (both channels). Lower priority is more urgent."""
        if call_id in self._policy.streams:
            return
        if self._pool is None:
            s = self.settings
            if s.live and s.max_live_streams > 0 and s.engine != "none":
                self._flag(call_id, "no live captions: the speech engine is not running")
            return
        info, victim = self._policy.admit(call_id, priority, 1)  # one pool
        if victim is not None:
            self._shed(victim)
        if not info.live:
            self._flag(call_id, info.reason)

    def feed(self, frame: AudioFrame) -> None:
        """20 ms of one channel's decoded audio. Never blocks; frames of calls without
        live captions are ignored (their final transcript comes from the recording)."""
        info = self._policy.streams.get(frame.call_id)
        if info is None or not info.live:
            self.stats["frames_ignored"] += 1
            return
        if frame.channel not in ("caller", "handler") or len(frame.pcm) % 2:
            # Not 16-bit PCM of a known channel: refuse here rather than let the decoder
            # thread fail on it (and lose the stream's recogniser state).
            self.stats["frames_bad"] += 1
            return
        self.stats["frames_in"] += 1
        assert self._pool is not None  # info.live: admitted while the pool runs
        now = time.monotonic()
        ok = self._pool.put_frame((frame.call_id, frame.channel), frame.pcm, frame.offset, now)
        if not ok:
            # Queue full: this frame is lost and the pool is ~2 s behind. Shed the least
            # urgent live call now rather than let every call fall behind.
            self.stats["frames_dropped"] += 1
            victim = self._policy.overloaded(0, self._pool.lag(now), now, full=True)
            if victim is not None:
                self._shed(victim)

    def live_stop(self, call_id: str) -> None:
        """End live captions for a call; pending audio is decoded and finals published."""
        info = self._policy.remove(call_id)
        if info is None or self._pool is None:
            return
        if info.live:
            self._pool.stop_stream((call_id, "caller"))
            self._pool.stop_stream((call_id, "handler"))
        self._pool.forget(call_id)

    def live_status(self, call_id: str) -> dict[str, Any] | None:
        """Whether a call has live captions and, if not, why (for the desk)."""
        info = self._policy.streams.get(call_id)
        return None if info is None else {"live": info.live, "reason": info.reason,
                                          "priority": info.priority}

    def worker_lag(self) -> list[float]:
        """Live transcription lag (s): one figure, the pool's (empty when live is off)."""
        return [] if self._pool is None else [self._pool.lag(time.monotonic())]

    def _shed(self, victim: StreamInfo) -> None:
        self.stats["streams_shed"] += 1
        if self._pool is not None:
            self._pool.shed(victim.call_id)
        log.warning("live transcription shed", call_id=victim.call_id,
                    priority=victim.priority, reason=victim.reason)
        self._flag(victim.call_id, victim.reason)

    def _flag(self, call_id: str, detail: str) -> None:
        self._safe_publish(CallFlagged(call_id=call_id, at=time.time(), flag=LIVE_OFF_FLAG,
                                       detail=detail))

    async def _monitor(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            if self._pool is not None:
                victim = self._policy.overloaded(0, self._pool.lag(now), now)
                if victim is not None:
                    self._shed(victim)

    def _emit_threadsafe(self, call_id: str, channel: str, h: Hypothesis) -> None:
        # Worker thread: never touch loop state here, only schedule onto the loop.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._emit, call_id, channel, h)
            except RuntimeError:  # loop closed between the check and the call
                pass

    def _emit(self, call_id: str, channel: str, h: Hypothesis) -> None:
        info = self._policy.streams.get(call_id)
        if info is not None and not info.live:
            return  # shed: late results would contradict the "live off" flag
        self.stats["segments_published"] += 1
        self._safe_publish(TranscriptSegment(
            call_id=call_id, at=time.time(), channel=channel,  # type: ignore[arg-type]
            text=h.text, start=round(h.start, 3), end=round(h.end, 3), final=h.final,
            confidence=None if h.confidence is None else round(h.confidence, 4),
            words=[{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3),
                    "conf": round(w.confidence, 3)} for w in h.words]))

    def _safe_publish(self, event: DomainEvent) -> None:
        try:
            result = self._publish(event)
            if inspect.isawaitable(result):  # an async publish: run it, keep a reference
                task = asyncio.ensure_future(result)
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
        except Exception:  # a consumer's bug must not stop transcription
            log.exception("publish failed", call_id=event.call_id, type=event.type)

    # -- final ----------------------------------------------------------------------
    def enqueue_final(self, call_id: str, recording_path: str, *, priority: int = 0) -> None:
        """Queue the call's final transcription (a durable job row; a short write).
        ``priority`` is the line's (lower runs first: 999 transcripts before 101)."""
        with self._db.transaction() as conn:
            store.enqueue_job(conn, call_id, str(recording_path), priority)
        self._wake.set()

    def _final_should_stop(self) -> bool:
        # Called in the job thread between chunks: yield the CPU to live captions while
        # any live worker is behind (bounded wait), and stop promptly on shutdown.
        deadline = time.monotonic() + 30.0
        while not self._stopping and time.monotonic() < deadline and any(
                lag > 0.5 for lag in self.worker_lag()):
            time.sleep(0.1)
        return self._stopping

    async def _jobs(self) -> None:
        assert self._engine is not None and self._executor is not None
        loop = asyncio.get_running_loop()
        while not self._stopping:
            job = jobs.claim(self._db, self._worker, lease=self._lease, node=self._node)
            if job is None:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self._job_poll)
                except TimeoutError:
                    pass
                continue
            call_id, path = job
            if self._heartbeat is not None:
                self._heartbeat.held.add(call_id)
            try:
                result = await loop.run_in_executor(
                    self._executor, functools.partial(
                        run_job, self._engine, self._db, call_id, path,
                        language=self.settings.language, should_stop=self._final_should_stop))
            except Interrupted:
                jobs.finish(self._db, call_id, self._worker, requeue=True)
                return
            except AudioError as exc:
                self.stats["finals_failed"] += 1
                jobs.finish(self._db, call_id, self._worker, error=str(exc), permanent=True)
                log.error("final transcription failed", call_id=call_id, error=str(exc))
                continue
            except Exception as exc:
                self.stats["finals_failed"] += 1
                jobs.finish(self._db, call_id, self._worker, error=f"{type(exc).__name__}: {exc}")
                log.exception("final transcription failed", call_id=call_id)
                continue
            finally:
                if self._heartbeat is not None:
                    self._heartbeat.held.discard(call_id)
            jobs.finish(self._db, call_id, self._worker)
            self.stats["finals_done"] += 1
            self._safe_publish(TranscriptFinal(
                call_id=call_id, at=time.time(), text=result["text"],
                language=result["language"], engine=result["engine"], model=result["model"],
                confidence=result["confidence"], segments=result["segments"]))
