"""Process-wide settings for a process that carries calls (``controlroom serve``, benches).

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

FULL_EVERY = 100
"""Generation-1 collections between two full collections (CPython's default: 10)."""


def tune_gc() -> None:
    """Call once the process has started everything it keeps for its lifetime."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_EVERY)
