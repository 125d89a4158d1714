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
* ``seal()`` writes the rest, fixes the header, fsyncs, renames to ``<call_id>.wav``
  and returns the SHA-256 of the whole file; ``seal_async()`` does the same with the
  fsync and hash in a worker thread (use it on the loop for long calls).
* :func:`recover` seals ``.part`` files left by a crash: it truncates to whole stereo
  frames, fixes the header and reports ``recovered=True``.

Writes: with a :class:`DiskWriter` (what :class:`~telephony.media.MediaEngine` gives
every recording) each batch is handed to one writer thread and the tick never waits for
the disk. A write is ~40 us per 32 KB batch when the page cache takes it, but a busy or
failing disk (journal commit, writeback throttling, a network mount) can block a
``pwrite`` for hundreds of milliseconds - on the event loop that would stop every call's
audio and signalling, not just this recording. One thread, one queue: a recording's
writes, its header rewrites and its final ``fsync``/close happen in order, and a file
descriptor is only ever closed after its last queued write (never reused under a pending
write). Without a writer (tools, tests) the same writes happen inline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import queue
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import structlog

from .errors import MediaError

if TYPE_CHECKING:
    from .session import RtpStream

__all__ = ["DiskWriter", "Recording", "RecordingInfo", "recover", "wav_header"]

log = structlog.get_logger(__name__)

RATE = 8000
CHANNELS = 2
SAMPLE_BYTES = 2
BLOCK = CHANNELS * SAMPLE_BYTES
HEADER_BYTES = 44
PART_SUFFIX = ".wav.part"


@dataclass(frozen=True)
class RecordingInfo:
    """A sealed recording."""

    call_id: str
    path: Path
    """Final ``.wav`` path."""
    sha256: str
    """Hex SHA-256 of the whole file (header included)."""
    duration: float
    """Seconds of audio (frames / 8000)."""
    bytes: int
    """File size."""
    recovered: bool
    """True when sealed by :func:`recover` after a crash."""


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


class DiskWriter:
    """One thread doing recording writes in submission order (see the module docstring)."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.max_queued = 0
        """Most jobs ever waiting at once (read on the submitting thread)."""
        self.errors = 0

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

    def barrier(self) -> concurrent.futures.Future[None]:
        """A future done once every job submitted so far has run."""
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.submit(lambda: fut.set_result(None))
        return fut

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


class Recording:
    """One call's stereo recording; fed by the media clock, finished by :meth:`seal`."""

    def __init__(self, call_id: str, directory: Path, *, frame_samples: int = 160,
                 flush_every: int = 50, phase: int = 0, writer: DiskWriter | None = None) -> None:
        """Create ``<directory>/<call_id>.wav.part`` with a header (raises MediaError).

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
        self._frame = frame_samples
        self._flush_every = max(1, flush_every)
        self._phase = phase % self._flush_every
        self._ticks = 0
        self._pending: list[bytes] = []
        self._written = 0
        """Data bytes handed to the disk (inline: written; with a writer: queued)."""
        self._on_disk = 0
        """Data bytes written successfully (what the file holds; the sealed duration)."""
        self._writer = writer
        self._failed: OSError | None = None
        """Set by the writer thread when a write failed (reported by the next flush)."""
        self._interleave = np.empty(2 * frame_samples, dtype=np.int16)
        if self.path.exists() or self.part_path.exists():
            raise MediaError(f"recording for call {call_id} already exists")
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._fd: int | None = os.open(self.part_path,
                                           os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            os.write(self._fd, wav_header(0))
        except OSError as e:
            raise MediaError(f"cannot create recording {self.part_path}: {e.strerror}") from e

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
        if self._fd is None:
            return
        n = len(left)
        buf = self._interleave if n == self._frame else np.empty(2 * n, dtype=np.int16)
        buf[0::2] = left
        buf[1::2] = right
        self._pending.append(buf.astype("<i2", copy=False).tobytes())
        self.frames += n
        self._ticks += 1
        if self._ticks % self._flush_every == self._phase:
            self.flush()

    def flush(self) -> None:
        """Write buffered frames and rewrite the header sizes (crash-safe point).

        With a writer this only queues the batch; a failure the writer met since the
        last flush is raised here (MediaError), and the recording stops."""
        if self._fd is None:
            return
        if self._failed is not None:
            self._stop_recording(self._failed)
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        offset = HEADER_BYTES + self._written
        self._written += len(data)
        if self._writer is not None:
            fd = self._fd  # open until a job queued after this one closes it
            self._writer.submit(lambda: self._write(fd, data, offset))
            return
        try:
            self._write(self._fd, data, offset)
        except OSError as e:
            self._stop_recording(e)

    def _write(self, fd: int | None, data: bytes, offset: int) -> None:
        """Write one batch and the header sizes (writer thread, or inline)."""
        if fd is None or self._failed is not None:
            return
        try:
            os.pwrite(fd, data, offset)
            os.pwrite(fd, wav_header(offset - HEADER_BYTES + len(data)), 0)
        except OSError as e:
            if self._writer is None:
                raise
            self._failed = e  # reported on the loop by the next flush
            return
        self._on_disk = offset - HEADER_BYTES + len(data)

    def _stop_recording(self, e: OSError) -> None:
        """Disk full or similar: keep the call going, stop recording loudly."""
        fd, self._fd = self._fd, None
        self._pending.clear()
        if fd is not None:
            if self._writer is not None:
                self._writer.submit(lambda: os.close(fd))  # after its queued writes
            else:
                os.close(fd)
        raise MediaError(f"recording {self.call_id} write failed: {e.strerror}") from e

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

    def _drain(self) -> None:
        """Block until the writer has done every job queued so far (no-op inline)."""
        if self._writer is not None:
            self._writer.barrier().result()

    def _check_written(self, fd: int | None) -> None:
        """After the last write: a failure the writer met is this seal's error."""
        if self._failed is not None and fd is not None:
            os.close(fd)
            raise MediaError(f"recording {self.call_id} write failed: "
                             f"{self._failed.strerror}") from self._failed

    def _close_file(self) -> None:
        if self._fd is None:
            self._drain()  # a close queued after a failure
            return
        try:
            self._write_tail()
            self.flush()
        finally:
            fd, self._fd = self._fd, None
            self._drain()
        self._check_written(fd)
        if fd is not None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def seal(self) -> RecordingInfo:
        """Finish: write the tail, fix the header, fsync, rename to ``.wav``, hash. Idempotent.

        Runs on the caller's thread (and waits for the writer): the fsync and the hash
        read of the whole file take ~2 ms per minute of audio here. Prefer
        :meth:`seal_async` on the event loop.
        """
        if self.sealed is not None:
            return self.sealed
        if self._sealing:
            raise MediaError(f"recording {self.call_id} is already being sealed")
        self._close_file()
        os.replace(self.part_path, self.path)
        self.sealed = self._info(_sha256(self.path))
        return self.sealed

    async def seal_async(self) -> RecordingInfo:
        """Like :meth:`seal`, but the loop never waits for the disk: the writer finishes
        this recording's queued writes, then fsync, rename and hash run in a thread.

        The last frames are handed over on the loop first, so nothing recorded is lost;
        from then on the clock no longer feeds this recording.
        """
        if self.sealed is not None:
            return self.sealed
        if self._sealing:
            raise MediaError(f"recording {self.call_id} is already being sealed")

        def finish(fd: int | None) -> str:
            if fd is not None:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.replace(self.part_path, self.path)
            return _sha256(self.path)

        self._sealing = True
        try:
            self._write_tail()
            self.flush()
            fd, self._fd = self._fd, None
            if self._writer is not None:
                await asyncio.wrap_future(self._writer.barrier())
            self._check_written(fd)
            digest = await asyncio.to_thread(finish, fd)
        finally:
            self._sealing = False
        self.sealed = self._info(digest)
        return self.sealed

    def _info(self, digest: str) -> RecordingInfo:
        return RecordingInfo(call_id=self.call_id, path=self.path, sha256=digest,
                             duration=self._on_disk / BLOCK / RATE,
                             bytes=HEADER_BYTES + self._on_disk, recovered=False)


def recover(directory: Path, *, skip: set[Path] | frozenset[Path] = frozenset()) -> list[RecordingInfo]:
    """Seal every ``*.wav.part`` in ``directory`` (except ``skip``) left by a crash."""
    out: list[RecordingInfo] = []
    if not directory.is_dir():
        return out
    for part in sorted(directory.glob(f"*{PART_SUFFIX}")):
        if part in skip:
            continue
        call_id = part.name[: -len(PART_SUFFIX)]
        final = directory / f"{call_id}.wav"
        size = part.stat().st_size
        data = max(0, size - HEADER_BYTES) // BLOCK * BLOCK  # whole stereo frames only
        fd = os.open(part, os.O_RDWR)
        try:
            os.ftruncate(fd, HEADER_BYTES + data)
            os.pwrite(fd, wav_header(data), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        if final.exists():  # never overwrite a sealed file: keep both
            final = directory / f"{call_id}.recovered.wav"
        os.replace(part, final)
        out.append(RecordingInfo(call_id=call_id, path=final, sha256=_sha256(final),
                                 duration=data / BLOCK / RATE, bytes=HEADER_BYTES + data,
                                 recovered=True))
    return out
