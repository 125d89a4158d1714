"""Stereo call recordings: caller left, handler right, 8 kHz 16-bit PCM WAV.

Theory of operation:

* A recording is created at answer time and gets one frame per channel on every media
  clock tick until ``seal()``; so its duration equals the call's answered duration.
* It is written as ``<call_id>.wav.part``. Frames are buffered in memory and written in
  a batch every ``flush_every`` ticks (1 s by default, ~32 KB per call); after each batch
  the RIFF and data sizes in the header are rewritten. A ``kill -9`` therefore leaves a
  valid WAV up to the last flush (the page cache holds the data; we do not fsync per
  second, which would cost 300 syncs/s at full load - only ``seal`` fsyncs).
* At seal, audio still in the jitter buffers of the (closed) caller/handler streams is
  written as a short tail, so the caller's last words are kept: the duration is the
  answered duration plus the audio still buffered (typically 40-60 ms, at most the
  jitter buffer's max delay, 200 ms).
* ``seal()`` writes the rest, fixes the header, fsyncs the file, renames it to
  ``<call_id>.wav``, fsyncs the folder and returns the SHA-256 of the whole file; only
  then is the recording reported. ``seal_async()`` does the same with the fsync and hash
  in a worker thread (use it on the loop for long calls).
* :func:`recover` seals ``.part`` files left by a crash: it truncates to whole stereo
  frames, fixes the header and reports ``recovered=True``; :func:`find_sealed` describes a
  recording whose files were sealed but whose report a crash may have lost.

A failing disk (full, read-only, I/O error) never stops a recording for good:

* the segment being written is closed at once with a header matching what reached the
  disk (truncated to it) and renamed to its final name: it is a valid WAV on its own;
* audio from then on goes to an in-memory spool, bounded for the whole process by
  :attr:`DiskHealth.spool_limit` bytes; when it is full the oldest spooled audio of that
  recording is dropped, counted (``frames_lost``) and logged;
* every ``retry_interval`` s (on the next batch) the recording tries to open its next
  segment ``<call_id>.seg<n>-at<frame>.wav`` (``frame``: where it starts, in frames from
  answer) and writes the spool into it; once that works it carries on there;
* the audio that was dropped is a :class:`Gap` (start and end in seconds from answer,
  frames lost); the sealed :class:`RecordingInfo` lists every segment and gap.

Writes: with a :class:`DiskWriter` (what :class:`~telephony.media.MediaEngine` gives
every recording) each batch is handed to one writer thread and the tick never waits for
the disk. A write is ~40 us per 32 KB batch when the page cache takes it, but a busy or
failing disk (journal commit, writeback throttling, a network mount) can block a
``pwrite`` for hundreds of milliseconds - on the event loop that would stop every call's
audio and signalling, not just this recording. One thread, one queue: a recording's
files (segments, spool, retries) are only touched by that thread, in submission order,
so they need no lock; the loop only hands over bytes. Without a writer (tools, tests)
the same work happens inline.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import os
import queue
import re
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt
import structlog

from .errors import MediaError

if TYPE_CHECKING:
    from .stream import RtpStream

__all__ = ["DiskHealth", "DiskWriter", "Gap", "Recording", "RecordingInfo", "Segment",
           "find_sealed", "recover", "wav_header"]

log = structlog.get_logger(__name__)

RATE = 8000
CHANNELS = 2
SAMPLE_BYTES = 2
BLOCK = CHANNELS * SAMPLE_BYTES
HEADER_BYTES = 44
PART_SUFFIX = ".wav.part"
RETRY_INTERVAL = 2.0
"""Seconds between attempts to open the next segment while the disk fails."""
SPOOL_LIMIT = 64 << 20
"""Default bytes of audio all recordings together may hold in memory while the disk
fails (64 MiB: about 35 min of stereo call audio, e.g. 20 calls for 100 s)."""

_SEGMENT = re.compile(r"^(?P<id>.+)\.seg(?P<n>\d+)-at(?P<at>\d+)\.wav$")

T = TypeVar("T")


@dataclass(frozen=True)
class Segment:
    """One WAV file of a recording (a disk fault starts a new one)."""

    path: Path
    start: float
    """Seconds from answer where this file's audio starts."""
    duration: float
    """Seconds of audio in the file."""
    sha256: str
    """Hex SHA-256 of the whole file."""
    bytes: int


@dataclass(frozen=True)
class Gap:
    """Audio missing from a recording: the disk failed and the spool could not hold it."""

    start: float
    """Seconds from answer where the missing audio starts."""
    end: float
    """Seconds from answer where audio is recorded again."""
    frames_lost: int
    """Stereo sample frames lost (``(end - start) * 8000``)."""
    reason: str
    """The disk error (``No space left on device``), or ``recovered`` after a crash."""


@dataclass(frozen=True)
class RecordingInfo:
    """A sealed recording."""

    call_id: str
    path: Path
    """Final ``.wav`` path (of the first segment)."""
    sha256: str
    """Hex SHA-256 of the whole file (header included) at ``path``; "" if no audio ever
    reached the disk."""
    duration: float
    """Seconds of audio (frames / 8000) in all segments."""
    bytes: int
    """Size of all segments."""
    recovered: bool
    """True when sealed by :func:`recover` after a crash."""
    segments: tuple[Segment, ...] = ()
    """Every file of the recording, in order (one unless the disk failed)."""
    gaps: tuple[Gap, ...] = ()
    """Audio lost to a failing disk, in order."""


@dataclass
class DiskHealth:
    """Recording-disk state shared by all recordings of one writer (read on the loop,
    written on the writer thread: single ints and a set, no lock needed for reading)."""

    spool_limit: int = SPOOL_LIMIT
    """Bytes of audio all spools together may hold."""
    retry_interval: float = RETRY_INTERVAL
    spool_bytes: int = 0
    """Bytes held in spools now."""
    faults: int = 0
    """Segments closed by a disk error."""
    resumed: int = 0
    """Recordings that went back to disk after a fault."""
    frames_lost: int = 0
    """Frames dropped because the spool was full (or still spooled at seal)."""
    spooling: set[str] = field(default_factory=set)
    """Call ids of recordings whose audio is in memory now (the disk failed)."""
    last_error: str = ""


def wav_header(data_bytes: int) -> bytes:
    """The 44-byte canonical PCM WAV header for ``data_bytes`` of stereo 8 kHz 16-bit."""
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1,
                       CHANNELS, RATE, RATE * BLOCK, BLOCK, 8 * SAMPLE_BYTES, b"data", data_bytes)


def _check_call_id(call_id: str) -> None:
    if (not call_id or len(call_id) > 128 or call_id.startswith(".")
            or any(c in call_id for c in "/\\\0") or not call_id.isprintable()):
        raise MediaError(f"call id not usable as a file name: {call_id!r}")


def _sha256(path: Path) -> str:
    # One small buffer read into again and again: a fresh 1 MiB ``read`` per chunk in the
    # seal threads left glibc's per-thread arenas holding megabytes per sealed call.
    h = hashlib.sha256()
    buf = bytearray(1 << 16)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    """Make renames in ``directory`` durable (a power cut keeps the new names)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """``pwrite`` until all of ``data`` is written: a nearly full disk takes part of a
    batch and returns a short count (no error); the next write then raises ENOSPC."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(28, "No space left on device")
        view, offset = view[n:], offset + n


def _segment_name(call_id: str, n: int, start_frame: int) -> str:
    if n == 1 and start_frame == 0:
        return f"{call_id}.wav"
    return f"{call_id}.seg{n}-at{start_frame}.wav"


class DiskWriter:
    """One thread doing recording writes in submission order (see the module docstring)."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.max_queued = 0
        """Most jobs ever waiting at once (read on the submitting thread)."""
        self.errors = 0
        self.health = DiskHealth()
        """Disk faults, spool use and audio lost, for /metrics and /healthz."""

    @property
    def queued(self) -> int:
        """Jobs waiting for the writer (a disk falling behind shows here)."""
        return self._q.qsize()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="recording-writer",
                                            daemon=True)
            self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` on the writer thread after every job submitted before it."""
        if self._thread is None:
            self.start()
        self._q.put(job)
        waiting = self._q.qsize()
        if waiting > self.max_queued:
            self.max_queued = waiting

    def call(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run ``fn`` on the writer thread (in order); its result or error in a future."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def job() -> None:
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the waiting side
                fut.set_exception(e)
        self.submit(job)
        return fut

    def barrier(self) -> concurrent.futures.Future[None]:
        """A future done once every job submitted so far has run."""
        return self.call(lambda: None)

    def stop(self) -> None:
        """Finish every queued job, then end the thread (blocks)."""
        t, self._thread = self._thread, None
        if t is not None:
            self._q.put(None)
            t.join()

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # a job must never end the thread every recording needs
                self.errors += 1
                log.exception("recording writer job failed")


@dataclass
class _File:
    part: Path
    final: Path
    start: int
    """First frame (from answer)."""
    frames: int = 0
    renamed: bool = False


class _Segments:
    """The files of one recording. Every method runs on the writer thread (or inline):
    nothing here is shared with the loop but :class:`DiskHealth`'s counters."""

    def __init__(self, call_id: str, directory: Path, health: DiskHealth) -> None:
        self.call_id = call_id
        self.directory = directory
        self.health = health
        self.fd: int | None = None
        self.current: _File | None = None
        self.closed: list[_File] = []
        self.gaps: list[Gap] = []
        self.position = 0
        """Frames handed over so far (the next batch starts here)."""
        self.spool: collections.deque[bytes] = collections.deque()
        self.spool_bytes = 0
        self.spool_start = 0
        """Frame (from answer) of the first spooled byte."""
        self.error: OSError | None = None
        """The disk error of the outage in progress (None: writing to disk)."""
        self.next_retry = 0.0

    @property
    def on_disk_frames(self) -> int:
        cur = self.current.frames if self.current is not None else 0
        return cur + sum(f.frames for f in self.closed)

    def _last_end(self) -> int:
        return self.closed[-1].start + self.closed[-1].frames if self.closed else 0

    def open(self, start: int, data: bytes) -> bool:
        """Start the next segment at frame ``start`` holding ``data``; False on a disk error
        (nothing is left behind)."""
        n = len(self.closed) + 1
        name = _segment_name(self.call_id, n, start)
        f = _File(part=self.directory / f"{name}.part", final=self.directory / name, start=start)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(f.part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except OSError as e:
            self._outage(e)
            return False
        try:
            _pwrite_all(fd, wav_header(0), 0)
            if data:
                _pwrite_all(fd, data, HEADER_BYTES)
                _pwrite_all(fd, wav_header(len(data)), 0)
        except OSError as e:
            os.close(fd)
            try:
                os.unlink(f.part)
            except OSError:
                pass
            self._outage(e)
            return False
        f.frames = len(data) // BLOCK
        self.fd, self.current = fd, f
        return True

    def _outage(self, e: OSError) -> None:
        if self.error is None:
            self.spool_start = self.position
        self.error = e
        self.health.spooling.add(self.call_id)
        self.health.last_error = f"{e.strerror or e}"
        self.next_retry = time.monotonic() + self.health.retry_interval

    def append(self, data: bytes) -> None:
        """One batch of interleaved frames: to the disk, else to the spool."""
        frames = len(data) // BLOCK
        if self.fd is not None and self.current is not None:
            cur = self.current
            size = cur.frames * BLOCK
            try:
                _pwrite_all(self.fd, data, HEADER_BYTES + size)
                _pwrite_all(self.fd, wav_header(size + len(data)), 0)
            except OSError as e:
                self._close_failed(e)
            else:
                cur.frames += frames
                self.position += frames
                return
        if self.error is not None and time.monotonic() >= self.next_retry and self._resume(data):
            self.position += frames
            return
        self._spool_add(data)
        self.position += frames

    def _close_failed(self, e: OSError) -> None:
        """The disk failed under the open segment: keep what reached it, as a valid WAV."""
        fd, cur = self.fd, self.current
        self.fd, self.current = None, None
        assert fd is not None and cur is not None
        size = cur.frames * BLOCK
        try:  # a torn batch past the header's size is cut off; freeing blocks works when full
            os.ftruncate(fd, HEADER_BYTES + size)
            _pwrite_all(fd, wav_header(size), 0)
            os.fsync(fd)
        except OSError:
            pass  # read-only or I/O error: recover() fixes the .part at the next start
        os.close(fd)
        self.health.faults += 1
        self._outage(e)
        if cur.frames == 0 and self.closed:
            _unlink(cur.part)
        else:
            self.closed.append(cur)
            cur.renamed = _rename(cur.part, cur.final)
        log.warning("recording.disk_fault", call_id=self.call_id, error=self.health.last_error,
                    segment=cur.final.name, frames=cur.frames,
                    spool_bytes=self.health.spool_bytes)

    def _spool_add(self, data: bytes) -> None:
        h = self.health
        self.spool.append(data)
        self.spool_bytes += len(data)
        h.spool_bytes += len(data)
        dropped = 0
        while h.spool_bytes > h.spool_limit and self.spool:
            old = self.spool.popleft()
            self.spool_bytes -= len(old)
            h.spool_bytes -= len(old)
            self.spool_start += len(old) // BLOCK
            dropped += len(old) // BLOCK
        if dropped:
            if h.frames_lost == 0 or self.spool_start - dropped == self._last_end():
                log.error("recording.spool_full", call_id=self.call_id,
                          spool_limit=h.spool_limit, frames_lost=dropped)
            h.frames_lost += dropped

    def _resume(self, more: bytes = b"") -> bool:
        """Try the next segment with the spooled audio (and ``more``, the batch after it);
        True when back on disk."""
        data = b"".join([*self.spool, more])
        assert self.error is not None
        reason = f"{self.error.strerror or self.error}"
        if not self.open(self.spool_start, data):
            return False
        last_end = self._last_end()
        if self.spool_start > last_end:
            self.gaps.append(Gap(start=last_end / RATE, end=self.spool_start / RATE,
                                 frames_lost=self.spool_start - last_end, reason=reason))
        self.health.spool_bytes -= self.spool_bytes
        self.spool.clear()
        self.spool_bytes = 0
        self.error = None
        self.health.spooling.discard(self.call_id)
        self.health.resumed += 1
        log.info("recording.resumed", call_id=self.call_id, segment=self.current.final.name
                 if self.current else "", gap_frames=self.gaps[-1].frames_lost
                 if self.gaps and self.spool_start > last_end else 0)
        return True

    def finish(self) -> tuple[int | None, _File | None]:
        """At seal (writer thread): a last try for spooled audio; hand over the open file."""
        if self.error is not None and not self._resume():
            last_end = self._last_end()
            if self.position > last_end:
                self.gaps.append(Gap(start=last_end / RATE, end=self.position / RATE,
                                     frames_lost=self.position - last_end,
                                     reason=f"{self.error.strerror or self.error}"))
                self.health.frames_lost += self.position - self.spool_start
            self.health.spool_bytes -= self.spool_bytes
            self.spool.clear()
            self.spool_bytes = 0
            self.health.spooling.discard(self.call_id)
        fd, cur = self.fd, self.current
        self.fd, self.current = None, None
        return fd, cur

    def complete(self, fd: int | None, cur: _File | None) -> tuple[list[Segment], list[Gap]]:
        """fsync, rename, fsync the folder, hash (a worker thread; blocking)."""
        if cur is not None and fd is not None:
            try:
                os.fsync(fd)
            except OSError:
                log.exception("recording.fsync_failed", call_id=self.call_id)
            finally:
                os.close(fd)
            if cur.frames == 0 and self.closed:
                _unlink(cur.part)
            else:
                self.closed.append(cur)
        for f in self.closed:
            if not f.renamed:
                f.renamed = _rename(f.part, f.final)
        _fsync_dir(self.directory)
        segs = []
        for f in self.closed:
            path = f.final if f.renamed else f.part
            segs.append(Segment(path=path, start=f.start / RATE, duration=f.frames / RATE,
                                sha256=_sha256(path), bytes=HEADER_BYTES + f.frames * BLOCK))
        return segs, list(self.gaps)


def _rename(src: Path, dst: Path) -> bool:
    try:
        os.replace(src, dst)
    except OSError:
        log.exception("recording.rename_failed", path=str(src))
        return False
    return True


def _unlink(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


_I16 = np.dtype(np.int16)


class Recording:
    """One call's stereo recording; fed by the media clock, finished by :meth:`seal`."""

    def __init__(self, call_id: str, directory: Path, *, frame_samples: int = 160,
                 flush_every: int = 50, phase: int = 0, writer: DiskWriter | None = None,
                 health: DiskHealth | None = None) -> None:
        """Create ``<directory>/<call_id>.wav.part`` with a header. Raises MediaError for a
        call id that is not a file name or already recorded; a disk that fails here is
        a fault like any later one (the audio is spooled until the disk works).

        With ``writer`` the batches are written by that thread, else inline."""
        _check_call_id(call_id)
        self.call_id = call_id
        self.path = directory / f"{call_id}.wav"
        """Final path (the file is ``<path>.part`` until sealed)."""
        self.part_path = directory / f"{call_id}{PART_SUFFIX}"
        self.caller: RtpStream | None = None
        self.handler: RtpStream | None = None
        self.frames = 0
        """Stereo sample frames recorded so far (duration = frames / 8000)."""
        self.sealed: RecordingInfo | None = None
        self.tail_frames = 0
        """Frames written at seal from the closed streams' jitter buffers."""
        self._sealing = False
        self._closed = False
        self._frame = frame_samples
        self._flush_every = max(1, flush_every)
        self._phase = phase % self._flush_every
        self._ticks = 0
        self._pending: list[bytes] = []
        self._writer = writer
        # a batch's channels as they came (one bytes copy each per tick, ~10x cheaper
        # than interleaving a 160-sample frame per tick through numpy's strided copy),
        # interleaved once per batch in _spill: two numpy copies per second per call
        self._lefts: list[bytes] = []
        self._rights: list[bytes] = []
        if self.path.exists() or self.part_path.exists():
            raise MediaError(f"recording for call {call_id} already exists")
        h = health if health is not None else (writer.health if writer is not None else DiskHealth())
        self._files = _Segments(call_id, directory, h)
        if not self._files.open(0, b""):  # only this thread knows the recording yet
            log.warning("recording.disk_fault", call_id=call_id, error=h.last_error,
                        segment=self.path.name, frames=0)
            h.faults += 1

    @property
    def _on_disk(self) -> int:
        """Data bytes that reached the disk (all segments)."""
        return self._files.on_disk_frames * BLOCK

    def attach_caller(self, stream: RtpStream) -> None:
        """Record what ``stream`` receives on the left channel."""
        self.caller = stream

    def attach_handler(self, stream: RtpStream | None) -> None:
        """Record what ``stream`` receives on the right channel (None: silence)."""
        self.handler = stream

    @property
    def duration(self) -> float:
        """Seconds recorded so far."""
        return self.frames / RATE

    def write_frame(self, left: npt.NDArray[np.int16], right: npt.NDArray[np.int16]) -> None:
        """Append one tick of audio (two mono frames of equal length)."""
        if self._closed:
            return
        n = len(left)
        if n == self._frame and left.dtype is _I16 and right.dtype is _I16:
            self._lefts.append(left.tobytes())  # (a copy: the caller may reuse its arrays)
            self._rights.append(right.tobytes())
        else:  # (another frame length: interleave what is collected first, keep the order)
            self._spill()
            buf = np.empty(2 * n, dtype="<i2")
            buf[0::2] = left
            buf[1::2] = right
            self._pending.append(buf.tobytes())
        self.frames += n
        self._ticks += 1
        if self._ticks % self._flush_every == self._phase:
            self.flush()

    def flush(self) -> None:
        """Hand buffered frames to the disk (a crash-safe point once written). A disk
        error never reaches the caller: the writer spools and retries (module docstring)."""
        if self._closed:
            return
        self._spill()
        if not self._pending:
            return
        data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending.clear()
        files = self._files
        if self._writer is not None:
            self._writer.submit(lambda: files.append(data))
        else:
            files.append(data)

    def _spill(self) -> None:
        """Interleave the collected frames into ``_pending`` (one block of bytes)."""
        k = len(self._lefts)
        if not k:
            return
        block = np.empty((k, self._frame, 2), dtype="<i2")
        block[:, :, 0] = np.frombuffer(b"".join(self._lefts), dtype=np.int16).reshape(k, -1)
        block[:, :, 1] = np.frombuffer(b"".join(self._rights), dtype=np.int16).reshape(k, -1)
        self._lefts.clear()
        self._rights.clear()
        self._pending.append(block.tobytes())

    def _write_tail(self) -> None:
        """Play out what the jitter buffers of *closed* attached streams still hold.

        When a call ends, the last 40-100 ms the caller said is still in the jitter
        buffer; dropping it would cut the last word off the evidence. So the recording
        ends ``tail`` frames after the call (at most the buffer's delay).
        """
        jbs = [s._jb if s is not None and s.closed else None for s in (self.caller, self.handler)]
        depth = max((jb.depth for jb in jbs if jb is not None), default=0)
        # ceil; bounded by the buffer's max delay (200 ms): more would be a far end that
        # sent ahead of time, not words still in flight
        bound = max((jb.max_delay for jb in jbs if jb is not None), default=0) // self._frame
        frames = min(-(-depth // self._frame), bound)
        quiet = np.zeros(self._frame, dtype=np.int16)
        for _ in range(frames):
            left, right = (jb.pull() if jb is not None else quiet for jb in jbs)
            self.write_frame(left, right)
        self.tail_frames = frames

    def _last_batch(self) -> None:
        if self.sealed is None and self._sealing:
            raise MediaError(f"recording {self.call_id} is already being sealed")
        self._write_tail()
        self.flush()
        self._closed = True

    def seal(self) -> RecordingInfo:
        """Finish: write the tail, fix the header, fsync, rename to ``.wav``, fsync the
        folder, hash. Idempotent.

        Runs on the caller's thread (and waits for the writer): the fsync and the hash
        read of the whole file take ~2 ms per minute of audio here. Prefer
        :meth:`seal_async` on the event loop.
        """
        if self.sealed is not None:
            return self.sealed
        self._last_batch()
        files = self._files
        fd, cur = (self._writer.call(files.finish).result() if self._writer is not None
                   else files.finish())
        self.sealed = self._info(*files.complete(fd, cur))
        return self.sealed

    async def seal_async(self) -> RecordingInfo:
        """Like :meth:`seal`, but the loop never waits for the disk: the writer finishes
        this recording's queued writes, then fsync, rename and hash run in a thread.

        The last frames are handed over on the loop first, so nothing recorded is lost;
        from then on the clock no longer feeds this recording.
        """
        if self.sealed is not None:
            return self.sealed
        self._last_batch()
        self._sealing = True
        files = self._files
        try:
            if self._writer is not None:
                fd, cur = await asyncio.wrap_future(self._writer.call(files.finish))
            else:
                fd, cur = files.finish()
            segs, gaps = await asyncio.to_thread(files.complete, fd, cur)
        finally:
            self._sealing = False
        self.sealed = self._info(segs, gaps)
        return self.sealed

    def _info(self, segs: list[Segment], gaps: list[Gap]) -> RecordingInfo:
        if gaps:
            log.warning("recording.sealed_with_gaps", call_id=self.call_id,
                        gaps=[(g.start, g.end, g.frames_lost) for g in gaps])
        return _info_of(self.call_id, self.path, segs, gaps, recovered=False)


def _info_of(call_id: str, default: Path, segs: list[Segment], gaps: list[Gap], *,
             recovered: bool) -> RecordingInfo:
    return RecordingInfo(call_id=call_id, path=segs[0].path if segs else default,
                         sha256=segs[0].sha256 if segs else "",
                         duration=sum(s.duration for s in segs),
                         bytes=sum(s.bytes for s in segs), recovered=recovered,
                         segments=tuple(segs), gaps=tuple(gaps))


def _call_id_of(wav_name: str) -> tuple[str, int]:
    """``c1.wav`` -> (c1, 0); ``c1.seg2-at8000.wav`` -> (c1, 8000)."""
    m = _SEGMENT.match(wav_name)
    if m:
        return m["id"], int(m["at"])
    return wav_name[: -len(".wav")], 0


def _fix_part(part: Path) -> int:
    """Truncate a crashed ``.part`` to whole stereo frames and fix its header; data bytes."""
    size = part.stat().st_size
    data = max(0, size - HEADER_BYTES) // BLOCK * BLOCK  # whole stereo frames only
    fd = os.open(part, os.O_RDWR)
    try:
        os.ftruncate(fd, HEADER_BYTES + data)
        os.pwrite(fd, wav_header(data), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    return data


def _describe(directory: Path, call_id: str, *, recovered: bool,
              extra: list[Path] | None = None) -> RecordingInfo | None:
    """Every sealed segment of ``call_id`` on disk, hashed, with gaps between them."""
    found: list[tuple[int, Path]] = []
    first = directory / f"{call_id}.wav"
    if extra:  # a .part beside a sealed file of the same call: report the recovered one
        found = [(0, p) for p in extra]
    if not found and first.is_file():
        found.append((0, first))
    for p in directory.glob(f"{glob_escape(call_id)}.seg*-at*.wav") if not extra else ():
        cid, at = _call_id_of(p.name)
        if cid == call_id:
            found.append((at, p))
    if not found:
        return None
    found.sort(key=lambda t: t[0])
    segs, gaps, end = [], [], 0
    for at, p in found:
        data = max(0, p.stat().st_size - HEADER_BYTES) // BLOCK * BLOCK
        if at > end:
            gaps.append(Gap(start=end / RATE, end=at / RATE, frames_lost=at - end,
                            reason="recovered: audio missing between segments"))
        end = max(end, at + data // BLOCK)
        segs.append(Segment(path=p, start=at / RATE, duration=data / BLOCK / RATE,
                            sha256=_sha256(p), bytes=HEADER_BYTES + data))
    return _info_of(call_id, first, segs, gaps, recovered=recovered)


def glob_escape(s: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", s)


def find_sealed(directory: Path, call_id: str) -> RecordingInfo | None:
    """The sealed files of ``call_id`` (a crash may have come between sealing a recording
    and recording its checksum): every segment hashed; None if there are none."""
    _check_call_id(call_id)
    return _describe(directory, call_id, recovered=True)


def recover(directory: Path, *, skip: set[Path] | frozenset[Path] = frozenset()) -> list[RecordingInfo]:
    """Seal every ``*.wav.part`` in ``directory`` left by a crash (except those of the
    recordings ``skip`` names); one :class:`RecordingInfo` per call, with all its
    segments (the sealed ones too) and the gaps between them."""
    out: list[RecordingInfo] = []
    if not directory.is_dir():
        return out
    skip_ids = {_call_id_of(p.name[: -len(".part")])[0] for p in skip
                if p.name.endswith(PART_SUFFIX)}
    groups: dict[str, list[Path]] = {}
    for part in sorted(directory.glob(f"*{PART_SUFFIX}")):
        call_id, _ = _call_id_of(part.name[: -len(".part")])
        if call_id not in skip_ids:
            groups.setdefault(call_id, []).append(part)
    for call_id, parts in groups.items():
        extra: list[Path] = []
        for part in parts:
            _fix_part(part)
            final = part.with_name(part.name[: -len(".part")])
            if final.exists():  # never overwrite a sealed file: keep both
                final = directory / f"{call_id}.recovered.wav"
                extra.append(final)
            os.replace(part, final)
        _fsync_dir(directory)
        info = _describe(directory, call_id, recovered=True, extra=extra)
        if info is not None:
            out.append(info)
    return out
