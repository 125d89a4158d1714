"""telephony.runtime: the process settings `controlroom serve` applies once started.

Each check runs in a child Python, so the priorities it sets never touch the threads of
the test process itself."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_other_threads_go_to_the_background_and_call_path_threads_stay() -> None:
    r = _child("""
        import asyncio, json, os, threading
        from telephony.media.recording import DiskWriter
        from telephony.runtime import prioritise_this_thread

        def nice(tid=0):
            return os.getpriority(os.PRIO_PROCESS, tid)

        async def main():
            started, release, seen = threading.Event(), threading.Event(), {}

            def worker():  # stands in for a recogniser thread
                started.set()
                release.wait(10)
                seen["worker"] = nice()
                child = threading.Thread(target=lambda: seen.__setitem__("child", nice()))
                child.start()
                child.join()

            t = threading.Thread(target=worker, name="live-worker-0")
            t.start()
            started.wait(10)
            disk = DiskWriter()
            disk.start()
            executor_tid = await asyncio.to_thread(threading.get_native_id)  # "asyncio_0"
            moved = prioritise_this_thread()
            release.set()
            t.join()
            out = dict(seen, moved=moved, loop=nice(), writer=nice(disk._thread.native_id),
                       executor=nice(executor_tid),
                       later_executor=await asyncio.to_thread(nice))
            disk.stop()
            print(json.dumps(out))

        asyncio.run(main())
    """)
    assert r["moved"] >= 1
    assert r["worker"] == 10 and r["child"] == 10  # a background thread's children stay there
    assert r["loop"] == 0 and r["writer"] == 0 and r["executor"] == 0 and r["later_executor"] == 0


def test_tune_gc_freezes_start_up_objects_and_spaces_full_collections() -> None:
    r = _child("""
        import gc, json
        from telephony.runtime import FULL_EVERY, tune_gc
        tune_gc()
        print(json.dumps({"frozen": gc.get_freeze_count(), "threshold": gc.get_threshold(),
                          "full_every": FULL_EVERY}))
    """)
    assert r["frozen"] > 1000  # modules, functions... out of every collection
    assert r["threshold"][2] == r["full_every"] == 100


def test_release_free_heap_gives_freed_malloc_pages_back() -> None:
    """Freed malloc blocks between live ones stay resident until release_free_heap()."""
    r = _child("""
        import json
        from telephony.runtime import release_free_heap

        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024

        blocks = [bytes(2000) for _ in range(20000)]  # ~40 MB of malloc'd blocks
        keep = blocks[1::50]  # a live block every ~100 KB: the heap cannot shrink at its top
        del blocks
        before = rss()
        ok = release_free_heap()
        print(json.dumps({"ok": ok, "before": before, "after": rss(), "kept": len(keep)}))
    """)
    assert r["ok"] is True  # (Linux, glibc)
    assert r["before"] - r["after"] > 20 * 2**20  # most of the ~39 MB freed went back


def test_idle_media_engine_releases_the_heap_two_seconds_after_the_last_stream() -> None:
    """No stream and no recording: the tick returns early and trims the heap at 2 s idle,
    then every 10 s; a stream resets the count."""
    r = _child("""
        import asyncio, json, tempfile
        from pathlib import Path
        import telephony.media.session as session
        from telephony.media import MediaEngine

        calls = []
        session.release_free_heap = lambda: calls.append(1) or True

        async def main():
            with tempfile.TemporaryDirectory() as d:
                eng = MediaEngine(bind="127.0.0.1", port_min=31000, port_max=31100,
                                  recordings_dir=Path(d))
                for n in range(99):
                    eng._tick(n)
                first = len(calls)
                eng._tick(99)  # the 100th idle tick: 2 s
                at_2s = len(calls)
                s = eng.allocate()
                eng._tick(100)  # a stream: busy, count reset
                s.close()
                for n in range(101, 101 + 99):
                    eng._tick(n)
                again_before = len(calls)
                eng._tick(200)
                for n in range(201, 201 + 500):
                    eng._tick(n)
                print(json.dumps({"first": first, "at_2s": at_2s, "again_before": again_before,
                                  "end": len(calls)}))
                await eng.stop()

        asyncio.run(main())
    """)
    assert r == {"first": 0, "at_2s": 1, "again_before": 1, "end": 3}
