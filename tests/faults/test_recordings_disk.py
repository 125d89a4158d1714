"""The recordings disk fills up during a call and then frees up again - a real, small
tmpfs mounted on the recordings folder, filled by a real file - with the whole service,
Kamailio, a SIPp caller, a SIPp handler phone and Mosquitto."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from controlroom.service import Service
from controlroom.stack import Stack, StackOptions
from harness.fs import can_mount, ext4_image, fill, tmpfs
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
            print(f"spool 3 s: segments "
                  f"{[(s['start'], s['duration']) for s in segments]}, gap "
                  f"{gap['start']:.2f}-{gap['end']:.2f} s ({gap['frames_lost']} frames)")


async def test_recordings_file_system_turned_read_only_then_repaired(tmp_path: Path) -> None:
    """Recordings on an ext4 the kernel turns read-only mid-call (errors=remount-ro after
    a file system error). The call goes on; /healthz names the read-only recordings disk;
    at the end the recording is sealed with what reached the disk as a valid WAV (its
    name can no longer change: it stays ``.wav.part``) and one gap from the fault to the
    end, all on the record. After unmount, fsck and a restart the file is renamed to
    ``.wav`` and recorded again with its path and SHA-256."""
    recs = tmp_path / "data" / "recordings"
    with ext4_image(recs, 16) as fs:
        async with Stack(tmp_path, StackOptions(handlers=1, engine="none")) as st:
            svc = st.service
            caller = st.call("999", caller="07700900124", talk_s=7.0, name="ro")
            await wait_until(lambda: any(c.state == "connected" for c in svc.calls.values()),
                             20, "call connected")
            [call_id] = list(svc.calls)
            await asyncio.sleep(2.5)
            fs.fail()
            assert fs.read_only()
            await wait_until(lambda: svc.engine.stats.recordings_spooling == 1, 5,
                             "recording spooling")
            assert "Read-only file system" in " ".join(svc.health()["reasons"])
            assert await asyncio.to_thread(caller.wait, 30) == 0, caller.diagnostics()

            def recorded() -> bool:
                row = svc.db.query_one("SELECT recording_gaps FROM calls WHERE call_id=?",
                                       (call_id,))
                return bool(row and row["recording_gaps"])
            await wait_until(recorded, 15, "recording sealed and recorded")
            row = svc.db.query_one("SELECT * FROM calls WHERE call_id=?", (call_id,))
            [seg] = json.loads(row["recording_segments"])
            [gap] = json.loads(row["recording_gaps"])
            part = Path(row["recording_path"])
            assert part.name == f"{call_id}.wav.part" and part == Path(seg["path"])
            assert hashlib.sha256(part.read_bytes()).hexdigest() == row["recording_sha256"]
            frames = assert_valid_wav(part)
            assert gap["start"] == pytest.approx(frames / 8000, abs=1e-6)
            assert gap["reason"] == "Read-only file system"
            assert 5.0 <= gap["end"] <= 10.0 and gap["frames_lost"] >= 2 * 8000
            assert svc.health()["status"] == "ok"  # nothing spools once the call is over
            settings = st.settings
        # repair: unmount, fsck, mount again, start the service on the same data
        subprocess.run(["umount", str(recs)], check=True)
        subprocess.run(["e2fsck", "-fy", str(recs.parent / "recordings.ext4")],
                       check=False, capture_output=True)
        subprocess.run(["mount", "-o", "loop,errors=remount-ro",
                        str(recs.parent / "recordings.ext4"), str(recs)], check=True)
        svc = Service(settings)
        await svc.start()
        try:
            row = svc.db.query_one("SELECT * FROM calls WHERE call_id=?", (call_id,))
            wav = recs / f"{call_id}.wav"
            # What survives is what the kernel had written back before the error (ext4
            # drops the rest): the record follows the disk either way, never a stale hash.
            if wav.exists():
                assert Path(row["recording_path"]) == wav and not part.exists()
                assert hashlib.sha256(wav.read_bytes()).hexdigest() == row["recording_sha256"]
                survived = assert_valid_wav(wav)
                assert survived <= frames
            else:
                assert not part.exists() and row["recording_path"] == str(part)
                lost = json.loads(row["recording_gaps"])[-1]
                assert lost["reason"].startswith("recording file lost")
                assert lost["frames_lost"] == round(row["recording_duration"] * 8000)
                survived = -1
            print(f"read-only at {gap['start']:.2f} s; sealed {frames} frames as .part; "
                  "after fsck and restart: "
                  f"{f'{survived} frames survive' if survived >= 0 else 'the file is gone'}")
        finally:
            await svc.stop()
