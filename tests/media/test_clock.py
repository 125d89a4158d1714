"""The shared media clock: absolute schedule, catch-up after a stall, stop."""

from __future__ import annotations

import asyncio
import time

from telephony.media.clock import MediaClock


async def test_ticks_follow_wall_time_and_catch_up_after_stall() -> None:
    """No tick runs before its deadline; after a 150 ms stall the missed ticks are run back to back."""
    loop = asyncio.get_running_loop()
    at: list[float] = []

    def tick(n: int) -> None:
        at.append(loop.time())
        if n == 5:
            time.sleep(0.15)  # a misbehaving callback blocks the loop

    clock = MediaClock(0.02, tick)
    t0 = loop.time()
    clock.start()
    await asyncio.sleep(0.6)
    await clock.stop()
    elapsed = loop.time() - t0
    assert clock.ticks == len(at)
    assert all(t >= t0 + (n + 1) * 0.02 - 0.002 for n, t in enumerate(at))  # never early
    assert elapsed / 0.02 - 10 <= len(at) <= elapsed / 0.02 + 1  # absolute schedule, caught up
    assert clock.max_gap >= 0.15 and clock.late_ticks >= 5
    # the ticks after the stall ran in a burst: several within a few ms of each other
    assert sum(1 for a, b in zip(at[6:], at[7:], strict=False) if b - a < 0.005) >= 4
    assert not clock.running


async def test_failing_tick_does_not_stop_the_clock() -> None:
    """An exception in one tick is counted and the next ticks still run."""
    seen: list[int] = []

    def tick(n: int) -> None:
        seen.append(n)
        if n == 1:
            raise RuntimeError("boom")

    clock = MediaClock(0.01, tick)
    clock.start()
    await asyncio.sleep(0.1)
    await clock.stop()
    assert clock.errors == 1 and len(seen) >= 4
