"""Recordings as the engine reports them: sealed-recording events (with segments and
gaps), recordings-disk health for ``/metrics`` and ``/healthz``, and finding a recording
whose seal a crash cut off from its report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from telephony.api import EngineStats, RecordingGap, RecordingSealed, RecordingSegment

__all__ = ["disk_health", "disk_stats", "find_recording", "recording_sealed"]


def recording_sealed(info: Any, *, recovered: bool) -> RecordingSealed:
    """The event for a :class:`telephony.media.RecordingInfo` (or a look-alike)."""
    return RecordingSealed(
        at=time.time(), call_id=info.call_id, path=info.path, sha256=info.sha256,
        duration=info.duration, bytes=info.bytes, recovered=recovered,
        segments=tuple(RecordingSegment(path=s.path, start=s.start, duration=s.duration,
                                        sha256=s.sha256, bytes=s.bytes)
                       for s in getattr(info, "segments", ())),
        gaps=tuple(RecordingGap(start=g.start, end=g.end, frames_lost=g.frames_lost,
                                reason=g.reason) for g in getattr(info, "gaps", ())))


def disk_stats(media: Any, st: EngineStats) -> None:
    """Copy the recording writer's disk health into ``st`` (a fake media has none)."""
    h = getattr(getattr(media, "disk", None), "health", None)
    if h is None:
        return
    st.recording_disk_faults = int(h.faults)
    st.recordings_spooling = len(h.spooling)
    st.recording_spool_bytes = int(h.spool_bytes)
    st.recording_frames_lost = int(h.frames_lost)


def disk_health(media: Any) -> list[tuple[str, str]]:
    """``[("recordings", reason)]`` while the recordings disk fails, else ``[]``."""
    h = getattr(getattr(media, "disk", None), "health", None)
    if h is None or not h.spooling:
        return []
    n = len(h.spooling)
    return [("recordings", f"recordings disk failing ({h.last_error}): {n} recording"
                           f"{'s' if n != 1 else ''} held in memory "
                           f"({h.spool_bytes // 1024} KiB of {h.spool_limit // 1024} KiB), "
                           f"{h.frames_lost / 8000:.1f} s of audio lost so far")]


def find_recording(recordings_dir: Path, call_id: str) -> Any:
    """The sealed files of ``call_id`` as a RecordingInfo, None if there are none (or the
    media layer is not ours)."""
    try:
        from telephony.media.recording import find_sealed
    except ImportError:
        return None
    try:
        return find_sealed(recordings_dir, call_id)
    except Exception:  # noqa: BLE001 - MediaError: not a file name
        return None
