"""Process-wide settings for a process that carries calls (``controlroom serve``, benches):
the garbage collector (:func:`tune_gc`) and thread priorities (:func:`prioritise_this_thread`).

Python's cyclic garbage collector stops the whole process while it runs; a full
(generation 2) collection walks every tracked object, so with a few hundred calls up it
took 40-320 ms here under load (bench/sip_load.py lists each slow one) - long enough to
delay INVITEs past the 50 ms answer target and to make the media clock catch up.

The engine creates no reference cycles per call (see ``UNLINK_AFTER`` in
:mod:`telephony.engine.state`; a test guards it), so nearly everything a call allocates is
freed by reference counting and the cyclic collector finds almost nothing. So:

* ``gc.freeze()`` once started: modules, config and models loaded at start-up are never
  walked again;
* full collections only every ``FULL_EVERY`` generation-1 collections instead of 10, so
  they are rare; young collections (cheap: only new objects) run as usual and still
  collect the odd cycle a library makes.
"""

from __future__ import annotations

import gc
from typing import Any

FULL_EVERY = 100
"""Generation-1 collections between two full collections (CPython's default: 10)."""


def tune_gc() -> None:
    """Call once the process has started everything it keeps for its lifetime."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_EVERY)


_malloc_trim: Any = None


def release_free_heap() -> bool:
    """Give the C heap's free pages back to the operating system (glibc ``malloc_trim(0)``).

    CPython frees its small-object arenas once they are empty, but glibc keeps the
    pages of freed ``malloc`` blocks (numpy frames, bytes of packets and SIP messages,
    the recording writer's blocks, each thread's own arena) mapped unless they sit at
    the very top of a heap. After a busy spell the process's resident size therefore
    stayed ~50 % above its start while its Python heap was back where it began
    (bench/sip_load.py, 150 calls at 10 calls/s: 56 -> 83 MB a minute after the
    round). ``malloc_trim(0)`` returns every whole free page of every arena
    (``madvise(MADV_DONTNEED)``); nothing in use moves. It walks the free lists, so
    the media engine calls it only while no call is up (see
    ``MediaEngine._tick``). Returns False where there is no glibc (nothing done)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            fn = ctypes.CDLL(None).malloc_trim
            fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
            _malloc_trim = fn
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim is False:
        return False
    _malloc_trim(0)
    return True


BACKGROUND_NICE = 10
"""Nice value for every thread but the event loop's in a call-carrying process."""


KEEP_LEVEL = ("recording-writer", "asyncio_")
"""Name prefixes of Python threads that do call-path work and stay at the loop's priority:
the recording writer, and the loop's default executor (``asyncio.to_thread``: the fsync,
rename and hash that seal a recording, store reads)."""


def prioritise_this_thread(background_nice: int = BACKGROUND_NICE,
                           keep: tuple[str, ...] = KEEP_LEVEL) -> int:
    """Put every other thread of this process ``background_nice`` below the calling one.

    Call it from the event-loop thread once start-up is done. The loop carries SIP, the
    media clock and every call's state; speech recognition (which can use every core,
    and whose native pools have no Python name) and SQLite checkpoints are batch work
    next to it. Threads whose names start with one of ``keep`` stay level with the loop
    (the recording writer: evidence must not queue behind speech recognition; the
    default executor). On Linux the nice value is per thread and inherited by threads a
    thread creates, so recogniser pools made at model load stay in the background and
    executor threads the loop starts later stay level.

    Raising a thread's nice value needs no privilege. Returns how many threads were
    moved; 0 where the platform has no per-thread priorities.
    """
    import os
    import threading

    if not hasattr(os, "setpriority") or not os.path.isdir("/proc/self/task"):
        return 0
    level = {threading.get_native_id()} | {t.native_id for t in threading.enumerate()
                                            if t.name.startswith(keep) and t.native_id is not None}
    moved = 0
    for name in os.listdir("/proc/self/task"):
        tid = int(name)
        if tid in level:
            continue
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < background_nice:
                os.setpriority(os.PRIO_PROCESS, tid, background_nice)
                moved += 1
        except OSError:  # the thread ended meanwhile
            continue
    return moved
