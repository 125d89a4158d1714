"""The recordings disk fills up during a call and then frees up again - a real, small
tmpfs mounted on the recordings folder, filled by a real file - with the whole service,
Kamailio, a SIPp caller, a SIPp handler phone and Mosquitto."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from controlroom.stack import Stack, StackOptions
from harness.fs import can_mount, fill, tmpfs
from tests.e2e.conftest import wait_until
from tests.faults.test_crash_recovery import assert_valid_wav

pytestmark = [pytest.mark.faults, pytest.mark.realparts, pytest.mark.slow,
              pytest.mark.skipif(not can_mount(), reason="mounting a tmpfs needs root")]


async def test_recordings_disk_full_mid_call_spools_resumes_and_records_the_gap(
        tmp_path: Path, cad_subscriber_factory: Any) -> None:
    """A connected 999 call; the recordings tmpfs is filled for ~6 s, then freed. Health
    and /metrics show the fault while it lasts; the recording goes on into a second file
    when space returns; both files are valid WAVs with matching SHA-256; the audio the
    3 s spool could not hold is one gap exactly between the two files (frames counted);
    the call record and the CAD's call.recording carry the segments and the gap."""
    recs = tmp_path / "data" / "recordings"
    with tmpfs(recs, "2m"):
        async with Stack(tmp_path, StackOptions(handlers=1, engine="none")) as st:
            svc = st.service
            disk = svc.engine._media.disk
            # sip.recording_spool_mb is in MiB (32 s of audio each); 3 s keeps this short
            disk.health.spool_limit = 3 * 32000
            cad = await cad_subscriber_factory("127.0.0.1", st.mosquitto.port)
            caller = st.call("999", caller="07700900123", talk_s=16.0, name="full")
            await wait_until(lambda: any(c.state == "connected" for c in svc.calls.values()),
                             20, "call connected")
            [call_id] = list(svc.calls)
            await asyncio.sleep(2.5)
            filler = recs / "filler"
            await asyncio.to_thread(fill, filler)
            await wait_until(lambda: svc.engine.stats.recordings_spooling == 1, 5,
                             "recording spooling")
            h = svc.health()
            assert h["status"] == "degraded", h
            assert any("recordings disk failing (No space left on device)" in r
                       for r in h["reasons"]), h
            metrics = svc.metrics.render()
            assert 'controlroom_engine{stat="recording_disk_faults"} 1' in metrics
            assert 'controlroom_engine{stat="recordings_spooling"} 1' in metrics
            await asyncio.sleep(6.0)  # longer than the spool holds: audio is lost
            assert svc.engine.stats.recording_frames_lost > 0
            filler.unlink()
            await wait_until(lambda: svc.engine.stats.recordings_spooling == 0, 6,
                             "recording back on disk")
            assert svc.health()["status"] == "ok"
            assert await asyncio.to_thread(caller.wait, 30) == 0, caller.diagnostics()

            def recorded() -> bool:
                row = svc.db.query_one("SELECT recording_path FROM calls WHERE call_id=?",
                                       (call_id,))
                return bool(row and row["recording_path"])
            await wait_until(recorded, 15, "recording sealed and recorded")
            row = svc.db.query_one("SELECT * FROM calls WHERE call_id=?", (call_id,))
            segments = json.loads(row["recording_segments"])
            gaps = json.loads(row["recording_gaps"])
            assert len(segments) == 2, segments
            assert len(gaps) == 1, gaps
            total = 0
            for s in segments:
                p = Path(s["path"])
                assert hashlib.sha256(p.read_bytes()).hexdigest() == s["sha256"]
                frames = assert_valid_wav(p)
                assert frames == round(s["duration"] * 8000) and s["bytes"] == p.stat().st_size
                total += frames
            first, second = segments
            [gap] = gaps
            assert first["start"] == 0.0 and first["path"] == row["recording_path"]
            assert first["sha256"] == row["recording_sha256"]
            assert gap["start"] == pytest.approx(first["duration"], abs=1e-6)
            assert gap["end"] == pytest.approx(second["start"], abs=1e-6)
            assert gap["frames_lost"] == round((gap["end"] - gap["start"]) * 8000)
            assert gap["reason"] == "No space left on device"
            assert 1.0 <= gap["end"] - gap["start"] <= 9.0  # full ~6-9 s (detection, retry) minus the 3 s spool
            assert gap["frames_lost"] == svc.engine.stats.recording_frames_lost
            answered = total + gap["frames_lost"]
            assert 14.0 <= answered / 8000 <= 20.0  # the whole answered call is accounted for
            assert row["recording_duration"] == pytest.approx(total / 8000, abs=1e-3)
            msg = await cad.wait_for(call_id, "call.recording", 15)
            assert [s["id"] for s in msg["recording"]["segments"]] == [
                Path(s["path"]).stem for s in segments]
            assert msg["recording"]["gaps"][0]["frames_lost"] == gap["frames_lost"]
            print(f"disk full {gap['end'] - gap['start'] + 3:.1f} s: segments "
                  f"{[(s['start'], s['duration']) for s in segments]}, gap "
                  f"{gap['start']:.2f}-{gap['end']:.2f} s ({gap['frames_lost']} frames)")
