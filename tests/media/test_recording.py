"""Stereo WAV recordings: layout, duration, hash, crash safety and recovery."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from telephony.media.errors import MediaError
from telephony.media.recording import Recording, recover, wav_header


def read_wav(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    with wave.open(str(path)) as w:
        fmt = (w.getnchannels(), w.getframerate(), w.getsampwidth())
        return fmt, np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def test_stereo_layout_duration_and_hash(tmp_path: Path) -> None:
    """Caller is the left channel, handler the right; duration = ticks x 20 ms; sha256 of the file."""
    rec = Recording("c1", tmp_path, flush_every=7)
    assert rec.part_path.exists() and not rec.path.exists()
    for k in range(123):
        rec.write_frame(np.full(160, k, np.int16), np.full(160, -k, np.int16))
    info = rec.seal()
    assert info.path == tmp_path / "c1.wav" and not rec.part_path.exists()
    assert info.duration == pytest.approx(123 * 0.02)
    assert info.bytes == 44 + 123 * 160 * 4 == info.path.stat().st_size
    assert info.sha256 == hashlib.sha256(info.path.read_bytes()).hexdigest()
    assert not info.recovered
    fmt, data = read_wav(info.path)
    assert fmt == (2, 8000, 2)
    assert np.array_equal(data[0::2], np.repeat(np.arange(123), 160))
    assert np.array_equal(data[1::2], -np.repeat(np.arange(123), 160))
    assert rec.seal() is info  # idempotent


def test_header_is_kept_valid_at_each_flush(tmp_path: Path) -> None:
    """Between flushes the .part file is a valid WAV holding every flushed frame."""
    rec = Recording("c2", tmp_path, flush_every=50)
    for _k in range(120):
        rec.write_frame(np.full(160, 1, np.int16), np.zeros(160, np.int16))
    fmt, data = read_wav(rec.part_path)  # 100 frames flushed, 20 still buffered
    assert fmt == (2, 8000, 2) and len(data) == 2 * 100 * 160
    rec.seal()


def test_bad_call_ids_and_existing_files(tmp_path: Path) -> None:
    """Call ids that are not safe file names, or already recorded, raise MediaError."""
    for bad in ("", "../x", "a/b", ".hidden", "x\x00y"):
        with pytest.raises(MediaError, match="call id not usable as a file name"):
            Recording(bad, tmp_path)
    Recording("dup", tmp_path)
    with pytest.raises(MediaError, match="recording for call dup already exists"):
        Recording("dup", tmp_path)


def test_recover_truncates_to_whole_frames(tmp_path: Path) -> None:
    """A .part with a stale header and a torn last frame is sealed with fixed sizes."""
    part = tmp_path / "c3.wav.part"
    samples = np.arange(1000, dtype="<i2")  # 500 stereo frames
    part.write_bytes(wav_header(0) + samples.tobytes() + b"\x01\x02\x03")  # torn tail
    (tmp_path / "ignored.wav").write_bytes(wav_header(0))
    [info] = recover(tmp_path)
    assert info.recovered and info.call_id == "c3" and info.path == tmp_path / "c3.wav"
    assert info.duration == pytest.approx(500 / 8000) and info.bytes == 44 + 2000
    fmt, data = read_wav(info.path)
    assert np.array_equal(data, samples)
    assert info.sha256 == hashlib.sha256(info.path.read_bytes()).hexdigest()
    assert recover(tmp_path) == []


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import numpy as np
    from telephony.media.recording import Recording
    rec = Recording("crash", Path(sys.argv[1]), flush_every=50)
    k = 0
    while True:
        rec.write_frame(np.full(160, k % 30000, np.int16), np.full(160, -(k % 30000), np.int16))
        k += 1
        if k == 130:
            print("ready", flush=True)
        if k > 130:
            time.sleep(0.01)
""")


def test_kill_9_then_recover(tmp_path: Path) -> None:
    """A writer killed with SIGKILL leaves a file that recovers to every flushed second, exactly."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready"
        time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    [info] = recover(tmp_path)
    assert info.recovered and info.path.name == "crash.wav"
    fmt, data = read_wav(info.path)
    frames = len(data) // 2 // 160
    assert fmt == (2, 8000, 2) and len(data) % 320 == 0
    assert frames >= 100 and frames % 50 == 0  # whole flushed seconds (flush every 50 ticks)
    assert np.array_equal(data[0::2], np.repeat(np.arange(frames), 160))
    assert np.array_equal(data[1::2], -np.repeat(np.arange(frames), 160))


# --- the writer thread -------------------------------------------------------------

def _frames(rec: Recording, start: int, count: int) -> None:
    for k in range(start, start + count):
        rec.write_frame(np.full(160, k, np.int16), np.full(160, -k, np.int16))


async def test_writer_the_loop_never_waits_for_a_stuck_disk_and_nothing_is_lost(tmp_path: Path) -> None:
    """With the writer blocked (a disk that does not answer), frames and flushes still
    return at once; once it moves again, every frame is in the sealed file, in order."""
    import threading

    from telephony.media.recording import DiskWriter

    disk = DiskWriter()
    disk.start()
    stuck = threading.Event()
    disk.submit(lambda: stuck.wait(10))  # everything after this waits for the "disk"
    rec = Recording("w1", tmp_path, flush_every=10, writer=disk)
    _frames(rec, 0, 95)  # 9 flushes queued behind the stuck job
    assert disk.queued >= 9  # the 9 batches wait behind the stuck job
    assert rec.part_path.stat().st_size == 44  # nothing reached the file yet
    seal = asyncio.ensure_future(rec.seal_async())
    await asyncio.sleep(0.05)
    assert not seal.done()  # sealing waits for the writes, the loop does not
    stuck.set()
    info = await seal
    assert info.duration == pytest.approx(95 * 0.02) and info.bytes == 44 + 95 * 640
    fmt, data = read_wav(info.path)
    assert np.array_equal(data[0::2], np.repeat(np.arange(95), 160))
    assert np.array_equal(data[1::2], -np.repeat(np.arange(95), 160))
    assert info.sha256 == hashlib.sha256(info.path.read_bytes()).hexdigest()
    disk.stop()
    assert disk.queued == 0 and disk.errors == 0


def _enospc_above_header(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake full disk for unit tests: data writes fail, header rewrites succeed."""
    import errno

    from telephony.media import recording as recording_mod

    real = os.pwrite

    def pwrite(fd: int, data: bytes, off: int) -> int:
        if off > 44 or (off == 44 and data):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, off)
    monkeypatch.setattr(recording_mod.os, "pwrite", pwrite)


async def test_writer_a_failing_disk_spools_then_resumes_into_a_next_segment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC on the writer thread: the segment is closed as a valid WAV with what reached
    the disk, later audio is spooled (health shows it), and when space returns the
    recording goes on in segment 2 with every frame: no gap, nothing raised on the loop."""
    from telephony.media.recording import DiskWriter

    disk = DiskWriter()
    disk.health.retry_interval = 0.0
    rec = Recording("w2", tmp_path, flush_every=10, writer=disk)
    _frames(rec, 0, 20)  # two good batches
    disk.barrier().result(5)
    with monkeypatch.context() as m:
        _enospc_above_header(m)
        _frames(rec, 20, 30)  # three batches: the first fails, all three are spooled
        disk.barrier().result(5)
        assert disk.health.spooling == {"w2"} and disk.health.faults == 1
        assert disk.health.spool_bytes == 30 * 640
        fmt, data = read_wav(tmp_path / "w2.wav")  # closed already, valid on its own
        assert len(data) == 2 * 20 * 160
    _frames(rec, 50, 10)  # space is back: the spool and this batch go to segment 2
    disk.barrier().result(5)
    assert disk.health.spooling == set() and disk.health.spool_bytes == 0
    info = await rec.seal_async()
    assert info.gaps == () and [s.path.name for s in info.segments] == [
        "w2.wav", "w2.seg2-at3200.wav"]
    assert [s.start for s in info.segments] == [0.0, 20 * 0.02]
    assert info.duration == pytest.approx(60 * 0.02)
    _, second = read_wav(info.segments[1].path)
    assert np.array_equal(second[0::2], np.repeat(np.arange(20, 60), 160))
    for s in info.segments:
        assert s.sha256 == hashlib.sha256(s.path.read_bytes()).hexdigest()
        assert s.bytes == s.path.stat().st_size
    assert info.path == tmp_path / "w2.wav" and info.sha256 == info.segments[0].sha256
    assert not list(tmp_path.glob("*.part"))
    disk.stop()


async def test_a_full_spool_drops_the_oldest_audio_and_records_the_gap(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With room for 2 s of spool, a 5 s outage loses 3 s: the gap says where and how
    many frames, the next segment starts after it, and the loss is counted."""
    from telephony.media.recording import DiskWriter

    disk = DiskWriter()
    disk.health.retry_interval = 0.0
    disk.health.spool_limit = 2 * 50 * 640
    rec = Recording("w4", tmp_path, flush_every=50, writer=disk)
    _frames(rec, 0, 50)
    disk.barrier().result(5)
    with monkeypatch.context() as m:
        _enospc_above_header(m)
        _frames(rec, 50, 250)
        disk.barrier().result(5)
    assert disk.health.frames_lost == 3 * 50 * 160
    _frames(rec, 300, 50)
    info = await rec.seal_async()
    [gap] = info.gaps
    assert (gap.start, gap.end, gap.frames_lost) == (1.0, 4.0, 3 * 8000)
    assert gap.reason == "No space left on device"
    assert [(s.start, s.duration) for s in info.segments] == [(0.0, 1.0), (4.0, 3.0)]
    _, second = read_wav(info.segments[1].path)
    assert np.array_equal(second[0::2], np.repeat(np.arange(200, 350), 160))
    disk.stop()


async def test_media_engine_records_through_its_writer(tmp_path: Path) -> None:
    """MediaEngine's recordings go through its writer thread; stop() seals them and ends it."""
    from telephony.media import MediaEngine

    eng = MediaEngine(bind="127.0.0.1", port_min=47100, port_max=47199, recordings_dir=tmp_path)
    await eng.start()
    rec = eng.create_recording("w3")
    assert rec._writer is eng.disk
    await asyncio.sleep(1.3)  # over one flush (1 s) of silence on the clock
    assert rec._on_disk > 0
    await eng.stop()
    assert rec.sealed is not None and rec.sealed.duration == pytest.approx(rec.frames / 8000)
    assert eng.disk._thread is None


def test_a_disk_failing_from_the_start_spools_from_answer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Creating the file fails (ENOSPC): the recording starts in the spool, and once the
    disk takes writes its first file holds every frame from answer. A recording whose
    disk never recovers seals with no file and one gap over the whole call."""
    import errno

    from telephony.media import recording as recording_mod
    from telephony.media.recording import DiskHealth

    real_open = os.open

    def full(path: object, *a: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")
    health = DiskHealth(retry_interval=0.0)
    monkeypatch.setattr(recording_mod.os, "open", full)
    rec = Recording("s1", tmp_path, flush_every=10, health=health)
    never = Recording("s2", tmp_path, flush_every=10, health=health)
    _frames(rec, 0, 30)
    _frames(never, 0, 30)
    assert health.spooling == {"s1", "s2"} and health.faults == 2
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(recording_mod.os, "open", real_open)
    _frames(rec, 30, 10)
    info = rec.seal()
    assert [s.path.name for s in info.segments] == ["s1.wav"] and info.gaps == ()
    _, data = read_wav(info.path)
    assert np.array_equal(data[0::2], np.repeat(np.arange(40), 160))
    monkeypatch.setattr(recording_mod.os, "open", full)
    lost = never.seal()
    assert lost.segments == () and lost.sha256 == "" and lost.duration == 0.0
    assert [(g.start, g.end, g.frames_lost) for g in lost.gaps] == [(0.0, 0.6, 4800)]
    assert health.spooling == set() and health.spool_bytes == 0
