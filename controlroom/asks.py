"""Desk operations that wait for the routing leader's answer (global queue, issue 14).

Theory of operation. On one node a desk operation (set a handler available, transfer a
call, take a call-back...) calls the router and a refusal is a :class:`RoutingError` at
once, which the desk turns into a 409 with the router's message. With the global queue the
router is the leader's, a bus away: the node sends the operation as an input carrying a
request id (``req``); the leader answers every such input with a
:class:`store.routing_bus.Reply` to that node, ahead of the operation's own actions (empty
``error``: applied; else the router's message, word for word). :class:`Asks` keeps the
node's open requests: :meth:`Asks.answer` (on the event loop, from the bus reader) runs the
request's ``then`` when applied (the node's own part of the operation, e.g. a transfer's
unbridge, done before the actions that follow it in the same row) and resolves its future
(``None``, or the refusal as a :class:`RoutingError`). The desk waits a bounded time
(``controlroom.desk.LEADER_WAIT``) and says "pending" when no answer came: the request
stays open and is carried out when the answer comes.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from routing import RoutingError

log = structlog.get_logger("controlroom.asks")

MAX_OPEN = 10_000
"""Open requests kept at most (a leader away for long): past it the oldest is forgotten
(its future gets a RoutingError saying so; the operation may still be applied)."""


class Asks:
    """The node's desk requests waiting for the leader's :class:`Reply` (event loop only)."""

    def __init__(self, node: str) -> None:
        self._prefix = f"{node}-{uuid.uuid4().hex[:8]}-"
        """Unique per run: a reply meant for a previous run of this node matches nothing."""
        self._seq = itertools.count(1)
        self._open: dict[str, tuple[asyncio.Future[None], Callable[[], None] | None]] = {}

    def __len__(self) -> int:
        return len(self._open)

    def open(self, then: Callable[[], None] | None = None) -> tuple[str, asyncio.Future[None]]:
        """A new request id and the future its answer resolves. ``then`` runs (on the loop)
        when the leader applied the operation, before the actions that follow the reply."""
        req = f"{self._prefix}{next(self._seq)}"
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._open[req] = (fut, then)
        while len(self._open) > MAX_OPEN:
            old = next(iter(self._open))
            f, _ = self._open.pop(old)
            if not f.done():
                f.set_exception(RoutingError(f"request {old} forgotten: too many waiting"))
        return req, fut

    def answer(self, reply: Any) -> None:
        """The leader's :class:`store.routing_bus.Reply` (unknown ids are ignored)."""
        entry = self._open.pop(str(reply.req), None)
        if entry is None:
            return
        fut, then = entry
        if reply.error:
            if not fut.done():
                fut.set_exception(RoutingError(reply.error, state=reply.state,
                                               event=reply.event))
            return
        if then is not None:
            try:
                then()
            except Exception:  # noqa: BLE001 - the node's part failed: say so, keep going
                log.exception("asks.then_failed", req=reply.req)
        if not fut.done():
            fut.set_result(None)


__all__ = ["MAX_OPEN", "Asks"]
