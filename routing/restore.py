"""Start-up from the queue log: statistics and call-backs survive a restart.

Calls themselves do not survive (their SIP dialogs and media died with the process), so
every queue leg still open in the log is closed as ABANDON with ``reason="restart"``; on
a line with ``callback_on_abandon`` (999) the caller goes on the call-back list, because
a 999 caller cut off by our restart must be rung back like any other. Calls that were
connected get a COMPLETE row (``reason="restart"``) so the log has no dangling call.
The rows returned must be appended to the log; after that, ``replay(log)`` equals the
router's live figures again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .actions import Action, Callback, QueueLogEntry
from .errors import RoutingError
from .model import Call, CallState, LineSpec
from .stats import LineRecords, rebuild, record_abandon


class RouterRestore:
    """Restore after a restart and adopt a dead node's calls; see Router (which owns every
    attribute below)."""

    lines: dict[str, LineSpec]
    calls: dict[str, Call]
    _records: dict[str, LineRecords]
    _callbacks: dict[str, Callback]
    _ended: OrderedDict[str, CallState]
    _cb_seq: int

    if TYPE_CHECKING:
        def _clock(self, now: float) -> float: ...
        def _callback_for(self, call: Call, now: float,
                          wait: float) -> tuple[Callback, bool]: ...
        @staticmethod
        def _log(out: list[Action], now: float, call_id: str, line: str, handler_id: str,
                 event: str, **data: Any) -> None: ...

    def restore(self, entries: Iterable[QueueLogEntry], now: float) -> list[Action]:
        """After a restart, before any call: rebuild statistics and the call-back list
        from the queue log; calls that were waiting when the process stopped are lost and
        logged as ABANDON (reason ``restart``; on call-back lines they join the list).
        Returns the rows to append to the log."""
        now = self._clock(now)
        if self.calls or self._callbacks or any(r.enters or r.rejects
                                                  for r in self._records.values()):
            raise RoutingError("restore() must be called before any call enters the router")
        rows = list(entries)
        records, open_legs = rebuild(rows)
        for name, rec in records.items():
            live = self._records.get(name)
            if live is None:
                continue            # a line no longer configured: only replay will show it
            live.enters, live.abandons, live.rejects = rec.enters, rec.abandons, rec.rejects
            live.abandon_wait = rec.abandon_wait
            live.answer_at, live.answer_wait = rec.answer_at, rec.answer_wait

        out = self._close_open(rows, open_legs, now, reason="restart")
        self._trim_ended()
        return out

    def adopt(self, entries: Iterable[QueueLogEntry], now: float, *,
              reason: str) -> list[Action]:
        """Close the calls of another process (a dead node of a cluster) on this router's
        record: ``entries`` are the queue-log rows of those calls only. Connected calls get
        COMPLETE, queued or ringing ones ABANDON (on a call-back line they join *this*
        router's call-back list), each with ``reason``. The live calls and call-backs this
        router holds are untouched, and so are its statistics (the calls entered another
        router); returns the rows to append to the log."""
        now = self._clock(now)
        rows = [e for e in entries if not e.event.startswith("CALLBACK_")]
        _, open_legs = rebuild(rows)
        out = self._close_open(rows, open_legs, now, reason=reason, stats=False)
        self._trim_ended()
        return out

    def add_callbacks(self, entries: Iterable[QueueLogEntry], now: float) -> int:
        """Call-backs another router put on the record (a survivor's :meth:`adopt` of a dead
        node's calls, with one global queue): its CALLBACK_ADD rows onto this router's
        list, read as :meth:`restore` reads them. A row already here (the same entry and
        call) is skipped, so hearing it twice (a takeover's restore, then this) adds it
        once. Returns how many rows were added; nothing to log (the rows are logged)."""
        now = self._clock(now)
        seen = {(cb.cb_id, str(a.get("call_id", ""))) for cb in self._callbacks.values()
                for a in cb.attempts}
        rows = []
        for e in entries:
            key = (str(e.data.get("cb_id", "")), e.call_id)
            if e.event == "CALLBACK_ADD" and key[0] and key not in seen:
                seen.add(key)
                rows.append(e)
        self._close_open(rows, {}, now, reason="", stats=False)
        return len(rows)

    def _close_open(self, rows: list[QueueLogEntry],
                    open_legs: dict[str, tuple[str, float]], now: float, *,
                    reason: str, stats: bool = True) -> list[Action]:
        """Read the call-back list and the calls' ends from ``rows`` into this router, then
        log every call still open in them as over (COMPLETE or ABANDON with ``reason``)."""
        callers: dict[str, str] = {}
        keys: dict[str, str] = {}
        connected: dict[str, tuple[str, str]] = {}
        ended: dict[str, CallState] = {}
        for e in rows:
            if e.event == "ENTER":
                callers[e.call_id] = str(e.data.get("caller", ""))
                keys[e.call_id] = str(e.data.get("caller_key", callers[e.call_id]))
                connected.pop(e.call_id, None)
            elif e.event == "CONNECT":
                connected[e.call_id] = (e.line, e.handler_id)
            elif e.event in ("COMPLETE", "TRANSFER"):
                connected.pop(e.call_id, None)
                if e.event == "COMPLETE":
                    ended[e.call_id] = CallState.COMPLETED
            elif e.event == "ABANDON":
                ended[e.call_id] = CallState.ABANDONED
            elif e.event == "REJECTED":
                ended[e.call_id] = CallState.REJECTED
            elif e.event == "CALLBACK_ADD":
                cb_id = str(e.data.get("cb_id", ""))
                attempt = {"call_id": e.call_id, "at": e.at,
                           "wait": float(e.data.get("wait", 0.0))}
                known = self._callbacks.get(cb_id)
                if known is not None:
                    known.attempts.append(attempt)
                    continue
                self._callbacks[cb_id] = Callback(
                    cb_id, e.call_id, e.line, str(e.data.get("caller", "")), e.at,
                    float(e.data.get("wait", 0.0)), key=str(e.data.get("key", "")),
                    attempts=[attempt])
                self._bump_cb_seq(cb_id)
            elif e.event == "CALLBACK_TAKE":
                cb = self._callbacks.get(str(e.data.get("cb_id", "")))
                if cb is not None:
                    cb.state, cb.handler_id, cb.taken_at = "taken", e.handler_id, e.at
            elif e.event == "CALLBACK_RELEASE":
                cb = self._callbacks.get(str(e.data.get("cb_id", "")))
                if cb is not None:
                    cb.state, cb.handler_id, cb.taken_at = "pending", None, None
            elif e.event == "CALLBACK_DONE":
                self._callbacks.pop(str(e.data.get("cb_id", "")), None)

        out: list[Action] = []
        for call_id, (line, handler_id) in connected.items():
            self._log(out, now, call_id, line, handler_id, "COMPLETE", talk=None,
                      reason=reason)
            ended[call_id] = CallState.COMPLETED
        for call_id, (line, entered) in open_legs.items():
            wait = now - entered
            spec = self.lines.get(line)
            callback = spec is not None and spec.callback_on_abandon
            self._log(out, now, call_id, line, "", "ABANDON", wait=wait, position=0,
                      callback=callback, reason=reason)
            if spec is not None and stats:
                record_abandon(self._records[line], now, wait)
            if callback:
                ghost = Call(call_id, line, callers.get(call_id, ""), entered, entered, 0, 0,
                             0.0, caller_key=keys.get(call_id, ""))
                cb, repeat = self._callback_for(ghost, now, wait)
                self._log(out, now, call_id, line, "", "CALLBACK_ADD", cb_id=cb.cb_id,
                          caller=ghost.caller, wait=wait, key=ghost.caller_key,
                          repeat=repeat, reason=reason)
            ended[call_id] = CallState.ABANDONED
        for call_id, state in ended.items():
            self._ended[call_id] = state
        return out

    def _trim_ended(self) -> None:
        while len(self._ended) > 100_000:
            self._ended.popitem(last=False)

    def _bump_cb_seq(self, cb_id: str) -> None:
        if cb_id.startswith("cb") and cb_id[2:].isdigit():
            self._cb_seq = max(self._cb_seq, int(cb_id[2:]))
