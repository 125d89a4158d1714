"""telephony.runtime: the process settings `controlroom serve` applies once started."""

from __future__ import annotations

import gc
import os
import threading

from telephony.runtime import FULL_EVERY, prioritise_this_thread, tune_gc


def test_other_threads_go_to_the_background_and_this_one_stays() -> None:
    started, release = threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    def worker() -> None:
        seen["tid"] = threading.get_native_id()
        started.set()
        release.wait(10)
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, 0)  # this thread's own value
        inner = threading.Thread(target=lambda: seen.__setitem__(
            "child", os.getpriority(os.PRIO_PROCESS, 0)))
        inner.start()
        inner.join()

    t = threading.Thread(target=worker)
    t.start()
    started.wait(10)
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    try:
        moved = prioritise_this_thread(background_nice=max(mine + 5, 5))
    finally:
        release.set()
        t.join()
    assert moved >= 1
    assert seen["nice"] == max(mine + 5, 5)
    assert seen["child"] == seen["nice"]  # threads a background thread starts stay there
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine


def test_the_recording_writer_keeps_the_loops_priority(tmp_path) -> None:
    from telephony.media.recording import DiskWriter

    disk = DiskWriter()
    disk.start()
    try:
        before = os.getpriority(os.PRIO_PROCESS, disk._thread.native_id)
        prioritise_this_thread()
        assert os.getpriority(os.PRIO_PROCESS, disk._thread.native_id) == before
    finally:
        disk.stop()


def test_tune_gc_freezes_start_up_objects_and_spaces_full_collections() -> None:
    old = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 1000  # modules, functions... out of every collection
        assert gc.get_threshold()[2] == FULL_EVERY
    finally:
        gc.unfreeze()
        gc.set_threshold(*old)
