"""A line's figures, as the desk and the wallboard show them: today's and the last hour's
service level and the refusal a new call would get (:func:`line_figures`). Computed
from a router: the node's own (controlroom.desk), or on a global-queue cluster the
leader's, which publishes them in its snapshot (controlroom.leader)."""

from __future__ import annotations

import datetime as dt
from typing import Any


def midnight(now: float) -> float:
    """Local midnight of the day ``now`` falls in (the start of "today's" figures)."""
    d = dt.datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    return d.timestamp()


ROLLING = 3600.0
"""The wallboard's rolling service-level interval (s): the last hour."""


def line_figures(router: Any, now: float) -> dict[str, dict[str, Any]]:
    """Per line, what the desk shows of it and the refusal a new call gets: today's
    (since local midnight) and the last hour's service level (``ServiceLevel.as_dict``)
    and the overflow refusal (``Router.would_refuse``: ``queue-full``/``no-handlers`` or
    None). One node computes it from its router; with the global queue the leader
    publishes it in its snapshot (``figures``), so every node's desk and 486 are the
    room's."""
    since = midnight(now)
    return {name: {"today": router.service_level(name, now, since=since).as_dict(),
                   "rolling": router.service_level(name, now, since=now - ROLLING).as_dict(),
                   "refuse": router.would_refuse(name)}
            for name in router.lines}
