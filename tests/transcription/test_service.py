"""TranscriptionService with an engine double: live path, shedding, durable final jobs."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import structlog
import structlog.testing

from callevents import CallFlagged, TranscriptFinal, TranscriptSegment
from config.schema import TranscriptionSettings
from telephony.api import AudioFrame
from transcription import LIVE_OFF_FLAG, TranscriptionService, get_transcript
from transcription import store as tstore
from transcription.audio import write_wav

from .helpers import FakeEngine

VOICE = (3000 * np.sin(2 * np.pi * 300 * np.arange(160) / 8000)).astype(np.int16).tobytes()
SILENCE = bytes(320)


def _settings(**kw) -> TranscriptionSettings:
    base = {"engine": "vosk", "model": "unused", "workers": 1, "max_live_streams": 8}
    base.update(kw)
    return TranscriptionSettings(**base)


async def _feed(svc, call_ids, seconds, *, realtime=True, pcm=VOICE):
    """Feed 20 ms frames on both channels of each call, paced at real time."""
    t0 = time.monotonic()
    for n in range(int(seconds * 50)):
        for cid in call_ids:
            svc.feed(AudioFrame(cid, "caller", pcm, n * 0.02))
            svc.feed(AudioFrame(cid, "handler", SILENCE, n * 0.02))
        if realtime:
            await asyncio.sleep(max(0.0, t0 + (n + 1) * 0.02 - time.monotonic()))


async def _until(cond, within=10.0):
    """Poll a condition that worker threads make true (no event to await for it)."""
    deadline = time.monotonic() + within
    while not cond():  # noqa: ASYNC110 - polled: set by other threads and the DB
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def service(db):
    events = []
    svc = TranscriptionService(settings=_settings(), db=db, publish=events.append,
                               engine=FakeEngine(), job_poll=0.2)
    await svc.start()
    svc.events = events
    yield svc
    await svc.stop()


async def test_live_segments_published_on_loop(service):
    """Fed audio yields partials then a final per 0.5 s of voice, with media-clock times,
    published from the loop thread; live_stop flushes the tail."""
    loop_thread = __import__("threading").get_ident()
    seen_threads = set()
    orig = service._publish
    service._publish = lambda e: (seen_threads.add(__import__("threading").get_ident()), orig(e))
    service.live_start("c1", priority=0)
    await _feed(service, ["c1"], 1.1)
    service.live_stop("c1")
    await _until(lambda: any(e.text == "tail" for e in service.events))
    segs = [e for e in service.events if isinstance(e, TranscriptSegment)]
    finals = [(e.text, e.start, e.end) for e in segs if e.final]
    assert finals == [("word0", 0.0, 0.5), ("word1", 0.5, 1.0), ("tail", 1.1, 1.1)]
    assert any(not e.final and e.text == "word0" for e in segs)
    assert all(e.channel == "caller" and e.call_id == "c1" for e in segs)
    assert seen_threads == {loop_thread}


async def test_media_offset_is_kept(service):
    """A stream whose first frame is at offset 12.0 s reports times from 12.0."""
    service.live_start("c2", priority=1)
    for n in range(30):
        service.feed(AudioFrame("c2", "caller", VOICE, 12.0 + n * 0.02))
    await _until(lambda: any(isinstance(e, TranscriptSegment) and e.final for e in service.events))
    f = next(e for e in service.events if isinstance(e, TranscriptSegment) and e.final)
    assert (f.start, f.end) == (12.0, 12.5)


async def test_frames_of_unknown_calls_ignored(service):
    """Frames for a call without live_start are counted and ignored."""
    service.feed(AudioFrame("nope", "caller", VOICE, 0.0))
    assert service.stats["frames_ignored"] == 1 and service.events == []


async def test_max_live_streams_flags_refused_call(db):
    """Beyond max_live_streams the 101 call gets a live_transcript_off flag with the reason."""
    events = []
    svc = TranscriptionService(settings=_settings(max_live_streams=1), db=db,
                               publish=events.append, engine=FakeEngine())
    await svc.start()
    try:
        svc.live_start("e1", priority=0)
        svc.live_start("n1", priority=1)
        flags = [e for e in events if isinstance(e, CallFlagged)]
        assert [(f.call_id, f.flag) for f in flags] == [("n1", LIVE_OFF_FLAG)]
        assert "max_live_streams (1)" in flags[0].detail
        assert svc.live_status("e1")["live"] and not svc.live_status("n1")["live"]
    finally:
        await svc.stop()


async def test_overload_sheds_101_first(db):
    """With a recogniser slower than real time, the 101 call loses live captions first,
    never silently: a warning is logged and the desk gets the flag with the reason and
    that the final transcript follows; the 999 call keeps them and the lag recovers."""
    events = []
    # 0.35 s of CPU per s of audio per channel: two calls (4 channels) = 1.4x real time
    # on one worker, one call = 0.7x.
    svc = TranscriptionService(settings=_settings(), db=db, publish=events.append,
                               engine=FakeEngine(cost=0.35), max_lag=0.5)
    await svc.start()
    try:
        svc.live_start("e999", priority=0)
        svc.live_start("n101", priority=1)
        with structlog.testing.capture_logs() as logs:
            await _feed(svc, ["e999", "n101"], 4.0)
        flags = [e for e in events if isinstance(e, CallFlagged)]
        assert [f.call_id for f in flags] == ["n101"]
        assert flags[0].flag == LIVE_OFF_FLAG and "CPU overload" in flags[0].detail
        assert "the final transcript follows from the recording" in flags[0].detail
        shed = [e for e in logs if e["event"] == "live transcription shed"]
        assert [(e["call_id"], e["log_level"], e["reason"]) for e in shed] == [
            ("n101", "warning", flags[0].detail)]
        assert svc.live_status("e999")["live"] and not svc.live_status("n101")["live"]
        await _until(lambda: svc.worker_lag()[0] < 0.5, within=5)
        late = [e for e in events if isinstance(e, TranscriptSegment) and e.call_id == "n101"
                and e.at > flags[0].at]
        assert late == []
    finally:
        await svc.stop()


async def test_final_job_stores_and_publishes(service, db, tmp_path):
    """enqueue_final -> transcript stored (both channels, time-ordered) and TranscriptFinal."""
    voice = np.tile(np.frombuffer(VOICE, np.int16), 50)  # 1 s
    write_wav(tmp_path / "r.wav", 8000, voice, np.zeros_like(voice))
    service.enqueue_final("c9", str(tmp_path / "r.wav"), priority=1)
    await _until(lambda: any(isinstance(e, TranscriptFinal) for e in service.events))
    ev = next(e for e in service.events if isinstance(e, TranscriptFinal))
    assert (ev.engine, ev.model, ev.text) == ("fake", "fake-1", "caller: word0\ncaller: word1")
    t = get_transcript(db, "c9")
    assert [(s["channel"], s["start"], s["end"], s["text"]) for s in t["segments"]] == [
        ("caller", 0.0, 0.5, "word0"), ("caller", 0.5, 1.0, "word1")]
    assert tstore.job_state(db, "c9")["state"] == "done"
    assert service.engine.transcribed == [8000]  # the all-zero handler channel is skipped


async def test_missing_recording_fails_job_permanently(service, db, tmp_path):
    """A missing file fails the job at once with the reason; nothing is published."""
    service.enqueue_final("gone", str(tmp_path / "missing.wav"))
    await _until(lambda: (tstore.job_state(db, "gone") or {}).get("state") == "failed")
    j = tstore.job_state(db, "gone")
    assert j["error"] == f"recording not found: {tmp_path / 'missing.wav'}"
    assert not any(isinstance(e, TranscriptFinal) for e in service.events)


async def test_jobs_survive_restart(db, tmp_path):
    """A job enqueued while no engine runs (engine none) stays queued; a job left
    'running' by a crash is recovered; a new service with an engine does both."""
    write_wav(tmp_path / "a.wav", 8000, np.tile(np.frombuffer(VOICE, np.int16), 25))
    events = []
    svc = TranscriptionService(settings=_settings(engine="none"), db=db, publish=events.append)
    await svc.start()
    svc.enqueue_final("q1", str(tmp_path / "a.wav"))
    svc.enqueue_final("r1", str(tmp_path / "a.wav"))
    await svc.stop()
    assert tstore.claim_job(db) == ("q1", str(tmp_path / "a.wav"))  # simulate a crash mid-job
    assert tstore.job_state(db, "q1")["state"] == "running"
    svc2 = TranscriptionService(settings=_settings(), db=db, publish=events.append,
                                engine=FakeEngine(), job_poll=0.1)
    await svc2.start()
    try:
        await _until(lambda: len([e for e in events if isinstance(e, TranscriptFinal)]) == 2)
        assert {e.call_id for e in events if isinstance(e, TranscriptFinal)} == {"q1", "r1"}
        assert tstore.job_state(db, "q1")["state"] == "done"
    finally:
        await svc2.stop()


async def test_stop_mid_job_requeues(db, tmp_path):
    """Stopping while a job runs puts it back to 'queued' (no transcript, no event)."""
    write_wav(tmp_path / "long.wav", 8000, np.tile(np.frombuffer(VOICE, np.int16), 50 * 60))
    events = []
    eng = FakeEngine()
    slow = eng.transcribe

    def transcribe(pcm, rate, *, should_stop=None):
        def stop_slowly():
            time.sleep(0.01)
            return should_stop()
        return slow(pcm, rate, should_stop=stop_slowly)

    eng.transcribe = transcribe
    svc = TranscriptionService(settings=_settings(), db=db, publish=events.append, engine=eng)
    await svc.start()
    svc.enqueue_final("long", str(tmp_path / "long.wav"))
    await _until(lambda: tstore.job_state(db, "long")["state"] == "running")
    await svc.stop()
    assert tstore.job_state(db, "long")["state"] == "queued"
    assert get_transcript(db, "long") is None and events == []


async def test_publish_errors_do_not_stop_service(db):
    """A consumer that raises does not break live transcription."""
    def bad(_e):
        raise RuntimeError("consumer bug")
    svc = TranscriptionService(settings=_settings(), db=db, publish=bad, engine=FakeEngine())
    await svc.start()
    try:
        svc.live_start("c", priority=0)
        await _feed(svc, ["c"], 0.6, realtime=False)
        await _until(lambda: svc.stats["segments_published"] >= 1)
    finally:
        await svc.stop()


async def test_full_inbox_drops_frames_and_sheds_without_blocking(db):
    """A tiny inbox on a slow worker: feed never blocks, extra frames are counted as
    dropped and the least urgent call is shed at once (flagged 'inbox full')."""
    events = []
    svc = TranscriptionService(settings=_settings(), db=db, publish=events.append,
                               engine=FakeEngine(cost=2.0), inbox_seconds=0.05)
    await svc.start()
    try:
        svc.live_start("e999", priority=0)
        svc.live_start("n101", priority=1)
        t = time.monotonic()
        await _feed(svc, ["e999", "n101"], 0.5, realtime=False)
        assert time.monotonic() - t < 2.0  # 100 feeds against a stalled worker return at once
        assert svc.stats["frames_dropped"] > 0
        flags = [e for e in events if isinstance(e, CallFlagged)]
        assert flags and flags[0].call_id == "n101" and "inbox full" in flags[0].detail
    finally:
        await svc.stop()


async def test_live_off_by_config_is_silent(db):
    """live = false: live_start/feed do nothing and publish nothing (no flag either)."""
    events = []
    svc = TranscriptionService(settings=_settings(live=False), db=db, publish=events.append,
                               engine=FakeEngine())
    await svc.start()
    try:
        svc.live_start("c", priority=0)
        svc.feed(AudioFrame("c", "caller", VOICE, 0.0))
        assert events == [] and svc.live_status("c") is None
    finally:
        await svc.stop()


async def test_engine_not_running_is_flagged(db):
    """An engine is configured but not running (start failed or not called): each call is
    told it has no live captions and why; with engine none nothing is published."""
    events = []
    svc = TranscriptionService(settings=_settings(), db=db, publish=events.append)
    svc.live_start("c", priority=0)
    assert [(e.flag, e.detail) for e in events] == [
        (LIVE_OFF_FLAG, "no live captions: the speech engine is not running")]
    quiet = []
    none = TranscriptionService(settings=_settings(engine="none"), db=db, publish=quiet.append)
    await none.start()
    try:
        none.live_start("c", priority=0)
        assert quiet == []
    finally:
        await none.stop()


def test_jobs_claimed_by_priority_then_age(db):
    """999 jobs (priority 0) are claimed before older 101 jobs; equal priority by age."""
    with db.transaction() as conn:
        tstore.enqueue_job(conn, "old101", "a.wav", 1)
        tstore.enqueue_job(conn, "e1", "b.wav", 0)
        tstore.enqueue_job(conn, "e2", "c.wav", 0)
    assert [tstore.claim_job(db)[0] for _ in range(3)] == ["e1", "e2", "old101"]
    assert tstore.claim_job(db) is None


async def test_async_publish_is_awaited(db):
    """publish may be a coroutine function: its coroutines are run, not dropped."""
    got = []

    async def publish(e):
        await asyncio.sleep(0)
        got.append(e)

    svc = TranscriptionService(settings=_settings(max_live_streams=1), db=db, publish=publish,
                               engine=FakeEngine())
    await svc.start()
    try:
        svc.live_start("a", priority=1)
        svc.live_start("b", priority=1)
        await _until(lambda: len(got) == 1, 2)
        assert isinstance(got[0], CallFlagged) and (got[0].call_id, got[0].flag) == ("b", LIVE_OFF_FLAG)
    finally:
        await svc.stop()


async def test_bad_frames_refused(service):
    """Odd-length PCM or an unknown channel is counted and never reaches a recogniser."""
    service.live_start("c", priority=0)
    service.feed(AudioFrame("c", "caller", b"\x01\x02\x03", 0.0))
    service.feed(AudioFrame("c", "system", VOICE, 0.0))  # type: ignore[arg-type]
    assert service.stats["frames_bad"] == 2 and service.stats["frames_in"] == 0
    await _feed(service, ["c"], 0.6, realtime=False)
    await _until(lambda: any(isinstance(e, TranscriptSegment) and e.final for e in service.events))
    assert service.engine.made == 2 and service._pool.errors == 0


async def test_final_jobs_run_at_once(db, tmp_path):
    """final_jobs = 2: two recordings are transcribed at the same time (each job thread
    waits at a barrier for the other), and both transcripts are stored and published."""
    import threading

    write_wav(tmp_path / "a.wav", 8000, np.tile(np.frombuffer(VOICE, np.int16), 25))
    eng = FakeEngine()
    plain = eng.transcribe
    both = threading.Barrier(2, timeout=20)
    threads = set()

    def transcribe(pcm, rate, *, should_stop=None):
        threads.add(threading.get_ident())
        both.wait()  # raises BrokenBarrierError (the job fails) unless two jobs run at once
        return plain(pcm, rate, should_stop=should_stop)

    eng.transcribe = transcribe
    events = []
    svc = TranscriptionService(settings=_settings(final_jobs=2), db=db, publish=events.append,
                               engine=eng, job_poll=0.1)
    await svc.start()
    try:
        svc.enqueue_final("j1", str(tmp_path / "a.wav"))
        svc.enqueue_final("j2", str(tmp_path / "a.wav"), priority=1)
        await _until(lambda: len([e for e in events if isinstance(e, TranscriptFinal)]) == 2,
                     within=30)
        assert len(threads) == 2 and svc.stats["finals_failed"] == 0
        assert {tstore.job_state(db, c)["state"] for c in ("j1", "j2")} == {"done"}
    finally:
        await svc.stop()


def test_shed_discards_the_victims_waiting_frames():
    """Shedding a call takes its waiting frames out of the queue at once (the threads
    must not decode the victim's backlog before the relief shows), leaves the other
    calls' frames in order, ignores the victim's later frames and stop, and a forget
    then removes it."""
    from transcription.live import StreamQueue

    q = StreamQueue(capacity=100)
    for n in range(3):
        for cid in ("keep", "shed"):
            assert q.put_frame((cid, "caller"), VOICE, n * 0.02, float(n))
    assert q.shed("shed") == 3
    assert len(q) == 3 and q.oldest() == 0.0
    assert q.put_frame(("shed", "caller"), VOICE, 0.06, 9.0) and len(q) == 3
    q.stop(("shed", "caller"))
    key, items, shed, since = q.take(0)
    assert key == ("keep", "caller") and not shed and since == 0.0
    assert [i[2] for i in items] == [0.0, 0.02, 0.04]
    assert not q.done(key, 5.0)
    key, items, shed, _ = q.take(0)  # the victim was in line before it was shed
    assert key == ("shed", "caller") and shed and items == []
    assert q.done(key, 5.0)
    q.forget("shed")
    assert q.take(0) is None and q.streams() == 1


def test_a_stream_is_served_by_one_thread_at_a_time_in_turn():
    """A stream taken by a thread is not handed to another until done; frames that
    arrive meanwhile wait (not counted as waiting for a thread) and the stream goes to
    the back of the line (round robin)."""
    from transcription.live import StreamQueue

    q = StreamQueue(capacity=100)
    q.put_frame(("a", "caller"), VOICE, 0.0, 1.0)
    q.put_frame(("b", "caller"), VOICE, 0.0, 2.0)
    key, _, _, _ = q.take(0)
    assert key == ("a", "caller")
    q.put_frame(("a", "caller"), VOICE, 0.02, 3.0)  # arrives while "a" is decoded
    key2, _, _, _ = q.take(0)
    assert key2 == ("b", "caller")
    assert q.take(0) is None  # "a" has work but is still taken
    assert q.oldest() is None  # its frame waits for its decode, not for a thread
    q.done(("a", "caller"), 3.5)
    assert q.oldest() == 3.5  # waiting for a thread since its decode ended
    key3, items, _, since = q.take(0)
    assert key3 == ("a", "caller") and [i[3] for i in items] == [3.0] and since == 3.5


def test_queue_bounded_but_controls_pass():
    """Frames beyond capacity (all streams together) are refused; stop and forget still
    go in, after the stream's frames."""
    from transcription.live import StreamQueue

    q = StreamQueue(capacity=2)
    assert q.put_frame(("c", "caller"), b"", 0.0, 1.0)
    assert q.put_frame(("d", "caller"), b"", 0.0, 2.0)
    assert not q.put_frame(("c", "caller"), b"", 0.02, 3.0)
    q.stop(("c", "caller"))
    q.forget("c")
    assert q.oldest() == 1.0 and len(q) == 2
    key, items, _, _ = q.take(0)
    assert key == ("c", "caller") and [i[0] for i in items] == ["frame", "stop", "forget"]
    q.done(key, 5.0, remove=True)
    assert q.oldest() == 2.0 and q.put_frame(("d", "caller"), b"", 0.02, 4.0)


def test_a_long_decode_holds_up_only_its_own_stream():
    """Head-of-line blocking: while one stream's decode is stuck (a long utterance), the
    other calls' captions keep coming from the other thread, whichever thread they
    would have been given to; the stuck stream's captions follow in order once it
    finishes."""
    import threading

    from transcription.live import LivePool

    from .helpers import FakeRecogniser

    release = threading.Event()
    entered = threading.Event()

    class Stuck(FakeRecogniser):
        def accept(self, pcm: bytes):
            entered.set()
            assert release.wait(30)
            return super().accept(pcm)

    made: list[int] = []

    def make():
        made.append(1)
        return Stuck(0.0) if len(made) == 1 else FakeRecogniser(0.0)

    got: list[tuple[str, str]] = []
    lock = threading.Lock()

    def emit(call_id, channel, h):
        if h.final:
            with lock:
                got.append((call_id, h.text))

    pool = LivePool(2, FakeEngine(), emit, capacity=10_000, make_recogniser=make)
    pool.start()
    try:
        pool.put_frame(("long", "caller"), VOICE, 0.0, time.monotonic())
        assert entered.wait(10)
        calls = [f"c{i}" for i in range(6)]
        for n in range(50):  # 1 s of voice each: a final per 0.5 s
            for cid in calls:
                pool.put_frame((cid, "caller"), VOICE, n * 0.02, time.monotonic())
        for n in range(1, 50):
            pool.put_frame(("long", "caller"), VOICE, n * 0.02, time.monotonic())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with lock:
                if {c for c, t in got if t == "word1"} == set(calls):
                    break
            time.sleep(0.01)
        with lock:
            assert {c for c, t in got if t == "word1"} == set(calls)
            assert not any(c == "long" for c, _ in got)
        release.set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and ("long", "word1") not in got:
            time.sleep(0.01)
        with lock:
            assert [t for c, t in got if c == "long"] == ["word0", "word1"]
    finally:
        release.set()
        pool.close()
