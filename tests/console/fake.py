"""An in-memory :class:`~console.backend.DeskBackend` for tests and standalone demos.

It behaves like a small control room: calls arrive on lines, wait, are offered to
handlers, connected, ended and graded; abandoned 999 calls go to the call-back list.
Tests drive the caller's side with the helper methods (:meth:`arrive`, :meth:`offer`,
:meth:`say`, :meth:`flag`, :meth:`link_incident`, :meth:`hang_up`, :meth:`push`) and
observe what the desk asked for in :attr:`FakeBackend.actions`.

Run the pages against it: ``python -m tests.console.fake --port 8080`` (from the repository root) (users demo-handler,
demo-supervisor, demo-auditor, demo-admin; password ``demo-password``).
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import re
import time
import uuid
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np

import callevents as ev
from console.backend import SETTABLE_STATES, Conflict, Invalid, NotFound


def write_tone_wav(path: Path, *, seconds: float = 3.0, rate: int = 8000) -> str:
    """Write a small stereo 16-bit WAV (caller left, handler right); returns its SHA-256."""
    t = np.arange(int(seconds * rate)) / rate
    left = 8000 * np.sin(2 * np.pi * 440 * t)
    right = np.where((t % 1.0) > 0.5, 6000 * np.sin(2 * np.pi * 660 * t), 0.0)
    frames = np.column_stack([left, right]).astype("<i2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return hashlib.sha256(path.read_bytes()).hexdigest()


class FakeBackend:
    """In-memory control room implementing :class:`~console.backend.DeskBackend`."""

    def __init__(self, *, handlers: dict[str, str] | None = None,
                 recordings_dir: Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.search_rank_window: int | None = None
        """Rank only this many newest matches (None: all), as the real search does for
        very frequent words."""
        self.recordings_dir = recordings_dir
        self.lines: dict[str, dict[str, Any]] = {
            "999": {"priority": 0, "threshold": 10.0},
            "101": {"priority": 1, "threshold": 60.0},
        }
        now = clock()
        self.handlers: dict[str, dict[str, Any]] = {}
        for hid, name in (handlers or {"h1": "Handler One", "h2": "Handler Two"}).items():
            self.handlers[hid] = {
                "handler_id": hid, "name": name, "state": "not_ready", "reason": "logged in",
                "since": now, "call_id": None, "skills": {"999": 5, "101": 5},
                "offer": None, "call": None, "wrapup": None,
                "today": {"calls": 0, "talk": 0.0, "rejected": 0}}
        self.calls: dict[str, dict[str, Any]] = {}
        self.timeline: dict[str, list[dict[str, Any]]] = {}
        self.transcripts: dict[str, list[dict[str, Any]]] = {}
        self.recordings: dict[str, tuple[Path, str]] = {}
        self.cbs: dict[str, dict[str, Any]] = {}
        self.waiting: list[str] = []
        self.stats = {line: {"offered": 0, "answered": 0, "in_threshold": 0, "abandoned": 0}
                      for line in self.lines}
        self.actions: list[tuple[Any, ...]] = []
        """Every desk operation received, e.g. ``("wrapup", call_id, handler_id, ...)``."""
        self._subs: set[asyncio.Queue[dict[str, Any] | None]] = set()

    # ------------------------------------------------------------------ publish
    def push(self, item: ev.DomainEvent | dict[str, Any]) -> None:
        """Send an event (or any dict with a ``type``) to every subscriber."""
        d = item.as_dict() if isinstance(item, ev.DomainEvent) else dict(item)
        for q in list(self._subs):
            q.put_nowait(d)

    def _handler_changed(self, h: dict[str, Any], state: str, reason: str = "") -> None:
        h.update(state=state, reason=reason, since=self.clock())
        self.push({"type": "handler.state", "handler_id": h["handler_id"], "state": state,
                   "reason": reason, "at": h["since"]})

    def publish_snapshot(self) -> None:
        """Push the current wallboard."""
        self.push({"type": "wallboard.snapshot", "snapshot": self._snapshot()})

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._subs.add(q)
        try:
            while (item := await q.get()) is not None:
                yield item
        finally:
            self._subs.discard(q)

    def close(self) -> None:
        """End every subscription."""
        for q in list(self._subs):
            q.put_nowait(None)

    # ------------------------------------------------------------------ caller side
    def _log(self, call_id: str, event: str, handler_id: str | None = None, **data: Any) -> None:
        self.timeline.setdefault(call_id, []).append(
            {"at": self.clock(), "event": event, "handler_id": handler_id, "data": data})

    def arrive(self, line: str, caller: str, *, display_name: str = "",
               location: str | None = None, location_accuracy: float | None = None,
               line_type: str = "mobile", flags: tuple[str, ...] = (),
               arrived_at: float | None = None) -> str:
        """A call is answered on ``line`` and starts waiting; returns its call id."""
        if line not in self.lines:
            raise Invalid(f"unknown line {line!r}")
        cid = uuid.uuid4().hex[:12]
        now = self.clock() if arrived_at is None else arrived_at
        self.calls[cid] = {
            "call_id": cid, "line": line, "priority": self.lines[line]["priority"],
            "caller": caller, "display_name": display_name, "line_type": line_type,
            "dialled": line, "location": location, "location_accuracy": location_accuracy,
            "state": "queued", "arrived_at": now, "answered_at": None, "ended_at": None,
            "handler_id": None, "ended_by": None, "end_reason": None, "wait": None,
            "talk": None, "incident_number": None, "grade": None, "thrive": None,
            "notes": None, "flags": list(flags), "held": False, "queue_history": [],
            "recording_sha256": None, "recording_duration": None}
        self.stats[line]["offered"] += 1
        self.waiting.append(cid)
        self._log(cid, "ENTER", caller=caller)
        self.push(ev.CallArrived(call_id=cid, at=now, line=line,
                                 priority=self.lines[line]["priority"], caller=caller,
                                 display_name=display_name, location=location))
        self._queued(cid)
        return cid

    def _queued(self, cid: str) -> None:
        c = self.calls[cid]
        pos = self.waiting.index(cid) + 1
        c["queue_history"].append({"at": self.clock(), "event": "queued", "position": pos})
        self.push(ev.CallQueued(call_id=cid, at=self.clock(), line=c["line"], position=pos,
                                priority=float(c["priority"])))
        self.publish_snapshot()

    def offer(self, call_id: str, handler_id: str) -> None:
        """Ring ``handler_id``'s phone with the waiting call (the screen-pop)."""
        c, h = self._call(call_id), self._handler(handler_id)
        if call_id in self.waiting:
            self.waiting.remove(call_id)
        c["state"] = "offered"
        h["offer"] = call_id
        c["queue_history"].append({"at": self.clock(), "event": "offered", "position": None})
        self._log(call_id, "OFFER", handler_id)
        self._handler_changed(h, "ringing", call_id)
        self.push(ev.CallOffered(call_id=call_id, at=self.clock(), line=c["line"],
                                 handler_id=handler_id, wait=self.clock() - c["arrived_at"]))

    def say(self, call_id: str, channel: str, text: str, *, final: bool = True,
            start: float | None = None, words: list[dict[str, Any]] | None = None) -> None:
        """A live transcript segment on ``channel`` (``caller`` or ``handler``); ``words``
        as the engine sends them with finals (``{word, start, end, conf}``)."""
        segs = self.transcripts.setdefault(call_id, [])
        start = float(len(segs) * 3) if start is None else start
        seg = {"channel": channel, "text": text, "start": start, "end": start + 2.5,
               "final": final, "confidence": 0.9}
        if final:
            segs.append(seg)
        self.push(ev.TranscriptSegment(call_id=call_id, at=self.clock(), channel=channel,  # type: ignore[arg-type]
                                       text=text, start=start, end=start + 2.5, final=final,
                                       words=list(words or [])))

    def flag(self, call_id: str, flag: str, detail: str = "") -> None:
        """Flag the call (``silent``, ``dtmf55``)."""
        self._call(call_id)["flags"].append(flag)
        self.push(ev.CallFlagged(call_id=call_id, at=self.clock(), flag=flag, detail=detail))

    def link_incident(self, call_id: str, number: str, grade: str = "") -> None:
        """The CAD answered with an incident number."""
        self._call(call_id).update(incident_number=number, grade=grade or None)
        self.push(ev.IncidentLinked(call_id=call_id, at=self.clock(), incident_number=number,
                                    grade=grade))

    def hang_up(self, call_id: str) -> None:
        """The caller hangs up (abandon while waiting/offered, or end if connected)."""
        c = self._call(call_id)
        now = self.clock()
        if c["state"] in ("queued", "offered"):
            pos = self.waiting.index(call_id) + 1 if call_id in self.waiting else 1
            if call_id in self.waiting:
                self.waiting.remove(call_id)
            for h in self.handlers.values():
                if h["offer"] == call_id:
                    h["offer"] = None
                    self._handler_changed(h, "available")
            cb = c["line"] == "999"
            c.update(state="abandoned", ended_at=now, wait=now - c["arrived_at"],
                     ended_by="caller", end_reason="abandoned")
            self.stats[c["line"]]["abandoned"] += 1
            self._log(call_id, "ABANDON", position=pos, wait=c["wait"])
            if cb:
                cb_id = uuid.uuid4().hex[:8]
                self.cbs[cb_id] = {"cb_id": cb_id, "call_id": call_id, "caller": c["caller"],
                                   "line": c["line"], "abandoned_at": now, "wait": c["wait"],
                                   "state": "open", "taken_by": None, "outcome": None}
            self.push(ev.CallAbandoned(call_id=call_id, at=now, line=c["line"],
                                       caller=c["caller"], wait=c["wait"], position=pos,
                                       callback=cb))
            self.publish_snapshot()
        elif c["state"] == "connected":
            self._end(call_id, by="caller")
        else:
            raise Conflict(f"call {call_id} is {c['state']}")

    def add_past_call(self, line: str, caller: str, *, arrived_at: float, handler_id: str,
                      transcript: list[tuple[str, str]], incident: str | None = None,
                      grade: str | None = None, outcome: str = "answered",
                      recording: bool = True) -> str:
        """Store a finished call (for previous-calls and auditor search); pushes nothing."""
        subs, self._subs = self._subs, set()
        try:
            cid = self.arrive(line, caller, arrived_at=arrived_at)
        finally:
            self._subs = subs
        self.stats[line]["offered"] -= 1      # history, not today's traffic
        self.waiting.remove(cid)
        c = self.calls[cid]
        talk = 3.0 * len(transcript)
        c.update(state="ended", answered_at=arrived_at + 4, ended_at=arrived_at + 4 + talk,
                 handler_id=handler_id, wait=4.0, talk=talk, ended_by="caller",
                 end_reason=outcome, incident_number=incident, grade=grade)
        self._log(cid, "CONNECT", handler_id, wait=4.0)
        self._log(cid, "COMPLETE", handler_id, talk=talk)
        for i, (channel, text) in enumerate(transcript):
            self.transcripts.setdefault(cid, []).append(
                {"channel": channel, "text": text, "start": i * 3.0, "end": i * 3.0 + 2.5,
                 "final": True, "confidence": 0.9})
        if recording and self.recordings_dir is not None:
            path = self.recordings_dir / f"{cid}.wav"
            sha = write_tone_wav(path, seconds=max(talk, 3.0))
            self.recordings[cid] = (path, sha)
            c.update(recording_sha256=sha, recording_duration=max(talk, 3.0))
        return cid

    # ------------------------------------------------------------------ helpers
    def _call(self, call_id: str) -> dict[str, Any]:
        try:
            return self.calls[call_id]
        except KeyError:
            raise NotFound(f"no call {call_id!r}") from None

    def _handler(self, handler_id: str) -> dict[str, Any]:
        try:
            return self.handlers[handler_id]
        except KeyError:
            raise NotFound(f"no handler {handler_id!r}") from None

    def _card(self, call_id: str | None) -> dict[str, Any] | None:
        if call_id is None:
            return None
        c = self.calls[call_id]
        card = {k: c[k] for k in (
            "call_id", "line", "priority", "caller", "display_name", "line_type", "location",
            "location_accuracy", "flags", "arrived_at", "answered_at", "held",
            "incident_number", "grade", "queue_history")}
        card["previous_calls"] = self._previous(c["caller"], 5, exclude=call_id)
        card["transcript"] = list(self.transcripts.get(call_id, []))
        return card

    def _previous(self, number: str, limit: int, exclude: str | None = None) -> list[dict[str, Any]]:
        rows = [c for c in self.calls.values()
                if c["caller"] == number and c["call_id"] != exclude]
        rows.sort(key=lambda c: c["arrived_at"], reverse=True)
        return [{"call_id": c["call_id"], "arrived_at": c["arrived_at"], "line": c["line"],
                 "outcome": c["end_reason"] or c["state"], "incident_number": c["incident_number"],
                 "grade": c["grade"], "handler_id": c["handler_id"], "markers": []}
                for c in rows[:limit]]

    def _end(self, call_id: str, *, by: str) -> None:
        c = self._call(call_id)
        now = self.clock()
        h = self.handlers[c["handler_id"]]
        c.update(state="ended", ended_at=now, ended_by=by, end_reason="completed",
                 talk=now - (c["answered_at"] or now))
        h["call"], h["wrapup"] = None, call_id
        h["today"]["calls"] += 1
        h["today"]["talk"] += c["talk"]
        self._log(call_id, "COMPLETE", h["handler_id"], by=by)
        self._handler_changed(h, "wrapup")
        self.push(ev.CallEnded(call_id=call_id, at=now, line=c["line"], by=by,  # type: ignore[arg-type]
                               reason="completed", wait=c["wait"] or 0.0, talk=c["talk"],
                               total=now - c["arrived_at"], handler_id=h["handler_id"]))
        self.publish_snapshot()

    def _snapshot(self) -> dict[str, Any]:
        now = self.clock()
        lines = []
        for name, spec in self.lines.items():
            st = self.stats[name]
            waiting = [{"call_id": cid, "caller": self.calls[cid]["caller"],
                        "wait": now - self.calls[cid]["arrived_at"], "position": i + 1,
                        "priority": self.calls[cid]["priority"], "estimated_wait": None}
                       for i, cid in enumerate(self.waiting) if self.calls[cid]["line"] == name]
            done = st["answered"] + st["abandoned"]
            lines.append({
                "name": name, "priority": spec["priority"], "threshold": spec["threshold"],
                "waiting": waiting, "longest_wait": max((w["wait"] for w in waiting), default=0.0),
                "offered_today": st["offered"], "answered_today": st["answered"],
                "answered_in_threshold_today": st["in_threshold"],
                "abandoned_today": st["abandoned"],
                "sl_today": st["in_threshold"] / done if done else None,
                "abandon_rate": st["abandoned"] / done if done else None})
        handlers = [{k: h[k] for k in ("handler_id", "name", "state", "reason", "since", "skills")}
                    | {"call_id": h["call"] or h["offer"]} for h in self.handlers.values()]
        return {"at": now, "lines": lines, "handlers": handlers}

    # ------------------------------------------------------------------ DeskBackend
    async def snapshot(self) -> dict[str, Any]:
        return self._snapshot()

    async def handler_view(self, handler_id: str) -> dict[str, Any]:
        h = self._handler(handler_id)
        t = h["today"]
        return {"at": self.clock(), "handler_id": handler_id, "name": h["name"],
                "state": h["state"], "reason": h["reason"], "since": h["since"],
                "skills": dict(h["skills"]),
                "today": {**t, "avg_talk": t["talk"] / t["calls"] if t["calls"] else 0.0},
                "offer": self._card(h["offer"]), "call": self._card(h["call"]),
                "wrapup": self._card(h["wrapup"])}

    async def set_handler_state(self, handler_id: str, state: str, reason: str = "",
                                by: str | None = None) -> None:
        h = self._handler(handler_id)
        if state not in SETTABLE_STATES:
            raise Invalid(f"state must be one of {', '.join(SETTABLE_STATES)}")
        if h["state"] in ("on_call", "ringing") and state == "available":
            raise Conflict(f"handler {handler_id} is {h['state']}")
        self.actions.append(("set_handler_state", handler_id, state, reason))
        self._handler_changed(h, state, reason)
        self.publish_snapshot()

    async def accept_offer(self, handler_id: str, call_id: str) -> None:
        h, c = self._handler(handler_id), self._call(call_id)
        if h["offer"] != call_id:
            raise Conflict(f"call {call_id} is not ringing on {handler_id}")
        now = self.clock()
        self.actions.append(("accept_offer", handler_id, call_id))
        wait = now - c["arrived_at"]
        c.update(state="connected", answered_at=now, handler_id=handler_id, wait=wait)
        st = self.stats[c["line"]]
        st["answered"] += 1
        st["in_threshold"] += wait <= self.lines[c["line"]]["threshold"]
        h["offer"], h["call"] = None, call_id
        self._log(call_id, "CONNECT", handler_id, wait=wait)
        self._handler_changed(h, "on_call", call_id)
        self.push(ev.CallAnswered(call_id=call_id, at=now, line=c["line"],
                                  handler_id=handler_id, wait=wait))
        self.publish_snapshot()

    async def reject_offer(self, handler_id: str, call_id: str, reason: str = "") -> None:
        h, c = self._handler(handler_id), self._call(call_id)
        if h["offer"] != call_id:
            raise Conflict(f"call {call_id} is not ringing on {handler_id}")
        self.actions.append(("reject_offer", handler_id, call_id))
        h["offer"] = None
        h["today"]["rejected"] += 1
        c["state"] = "queued"
        self.waiting.insert(0, call_id)
        self._log(call_id, "REJECT", handler_id)
        self.push(ev.CallOfferFailed(call_id=call_id, at=self.clock(), line=c["line"],
                                     handler_id=handler_id, reason="rejected"))
        self._handler_changed(h, "not_ready", f"rejected: {reason}" if reason else "rejected")
        self._queued(call_id)

    def _connected(self, call_id: str) -> dict[str, Any]:
        c = self._call(call_id)
        if c["state"] != "connected":
            raise Conflict(f"call {call_id} is {c['state']}, not connected")
        return c

    async def hold(self, call_id: str, on: bool) -> None:
        c = self._connected(call_id)
        self.actions.append(("hold", call_id, on))
        c["held"] = on
        self._log(call_id, "HOLD" if on else "UNHOLD", c["handler_id"])

    async def transfer(self, call_id: str, *, to_line: str | None = None,
                       to_handler: str | None = None, confirm: bool = False) -> None:
        if (to_line is None) == (to_handler is None):
            raise Invalid("give exactly one of to_line or to_handler")
        c = self._connected(call_id)
        if to_line is not None and to_line not in self.lines:
            raise NotFound(f"no line {to_line!r}")
        if to_handler is not None:
            target = self._handler(to_handler)
            if target["state"] != "available":
                raise Conflict(f"handler {to_handler} is {target['state']}")
        self.actions.append(("transfer", call_id, to_line, to_handler))
        h = self.handlers[c["handler_id"]]
        h["call"], h["wrapup"] = None, call_id
        self._handler_changed(h, "wrapup")
        self._log(call_id, "TRANSFER", h["handler_id"], to_line=to_line, to_handler=to_handler)
        self.push(ev.CallTransferred(call_id=call_id, at=self.clock(),
                                     from_handler=h["handler_id"], to_line=to_line,
                                     to_handler=to_handler))
        c.update(state="queued", handler_id=None)
        if to_line is not None:
            c["line"] = to_line
            self.waiting.insert(0, call_id)
            self._queued(call_id)
        else:
            self.offer(call_id, to_handler)  # type: ignore[arg-type]

    async def end_call(self, call_id: str) -> None:
        self._connected(call_id)
        self.actions.append(("end_call", call_id))
        self._end(call_id, by="handler")

    async def wrapup(self, call_id: str, handler_id: str, thrive: dict[str, str],
                     grade: str, notes: str) -> None:
        c = self._call(call_id)
        self.actions.append(("wrapup", call_id, handler_id, dict(thrive), grade, notes))
        c.update(thrive=dict(thrive), grade=grade or c["grade"], notes=notes)
        self.push(ev.CallWrapUp(call_id=call_id, at=self.clock(), handler_id=handler_id,
                                thrive=dict(thrive), grade=grade, notes=notes))

    async def save_draft(self, call_id: str, handler_id: str, draft: dict[str, Any]) -> None:
        self._call(call_id)["draft"] = dict(draft)

    async def set_wrapup_limit(self, line: str, seconds: float, by: str) -> None:
        if line not in self.lines:
            raise NotFound(f"no line {line!r}")
        self.actions.append(("set_wrapup_limit", line, seconds, by))

    async def extend_wrapup(self, handler_id: str, seconds: float) -> None:
        h = self._handler(handler_id)
        if h["state"] != "wrapup":
            raise Conflict(f"handler {handler_id} is {h['state']}, not in wrap-up")
        self.actions.append(("extend_wrapup", handler_id, seconds))

    async def end_wrapup(self, handler_id: str) -> None:
        h = self._handler(handler_id)
        if h["state"] != "wrapup":
            raise Conflict(f"handler {handler_id} is {h['state']}, not in wrap-up")
        self.actions.append(("end_wrapup", handler_id))
        h["wrapup"] = None
        self._handler_changed(h, "available")
        self.publish_snapshot()

    async def callbacks(self) -> list[dict[str, Any]]:
        # Stable: by first abandon, whatever the state (taking one never moves a row).
        return sorted((dict(cb) for cb in self.cbs.values() if cb["state"] != "done"),
                      key=lambda cb: (cb["abandoned_at"], cb["cb_id"]))

    def _cb(self, cb_id: str) -> dict[str, Any]:
        try:
            return self.cbs[cb_id]
        except KeyError:
            raise NotFound(f"no call-back {cb_id!r}") from None

    async def take_callback(self, cb_id: str, handler_id: str) -> None:
        cb = self._cb(cb_id)
        if cb["state"] != "open":
            raise Conflict(f"call-back {cb_id} is {cb['state']}")
        self.actions.append(("take_callback", cb_id, handler_id))
        cb.update(state="taken", taken_by=handler_id)

    def _owned(self, cb: dict[str, Any], by: str | None, what: str) -> None:
        if by is not None and (cb["state"] != "taken" or cb["taken_by"] != by):
            raise Conflict(f"call-back {cb['cb_id']} is {cb['state']}"
                           f"{' by ' + str(cb['taken_by']) if cb['state'] == 'taken' else ''}:"
                           f" only its owner may {what} it")

    async def release_callback(self, cb_id: str, by: str | None) -> None:
        cb = self._cb(cb_id)
        if cb["state"] != "taken":
            raise Conflict(f"call-back {cb_id} is {cb['state']}")
        self._owned(cb, by, "release")
        self.actions.append(("release_callback", cb_id, by))
        cb.update(state="open", taken_by=None)

    async def complete_callback(self, cb_id: str, outcome: str, by: str | None = None) -> None:
        cb = self._cb(cb_id)
        if cb["state"] == "done":
            raise Conflict(f"call-back {cb_id} is already done")
        self._owned(cb, by, "close")
        self.actions.append(("complete_callback", cb_id, outcome))
        cb.update(state="done", outcome=outcome)

    async def monitor(self, call_id: str, supervisor: str, mode: str,
                      phone: str = "") -> dict[str, Any]:
        """Supervisor listen / whisper / barge / stop on a connected call (recorded only)."""
        self._connected(call_id)
        self.actions.append(("monitor", call_id, supervisor, mode))
        self._log(call_id, "MONITOR_END" if mode == "stop" else "MONITOR", mode=mode,
                  supervisor=supervisor)
        return {"call_id": call_id, "supervisor": supervisor, "mode": mode,
                "state": "stopping" if mode == "stop" else "ringing"}

    async def reprioritise(self, call_id: str, priority: float) -> None:
        c = self._call(call_id)
        if call_id not in self.waiting:
            raise Conflict(f"call {call_id} is not waiting")
        self.actions.append(("reprioritise", call_id, priority))
        c["priority"] = priority
        # Stable sort keeps arrival order within a priority, like the router.
        self.waiting.sort(key=lambda cid: self.calls[cid]["priority"])
        self._log(call_id, "REPRIORITISE", priority=priority)
        self._queued(call_id)

    async def set_skills(self, handler_id: str, skills: dict[str, int]) -> None:
        h = self._handler(handler_id)
        self.actions.append(("set_skills", handler_id, dict(skills)))
        h["skills"] = dict(skills)
        self.publish_snapshot()

    async def call_detail(self, call_id: str) -> dict[str, Any]:
        c = self._call(call_id)
        rec = None
        if call_id in self.recordings:
            rec = {"recording_id": call_id, "sha256": self.recordings[call_id][1],
                   "duration": c["recording_duration"]}
        call = {k: v for k, v in c.items() if k not in ("queue_history", "held")}
        return {"call": call, "timeline": list(self.timeline.get(call_id, [])),
                "transcript": list(self.transcripts.get(call_id, [])), "recording": rec}

    async def previous_calls(self, number: str, limit: int = 10) -> list[dict[str, Any]]:
        return self._previous(number, limit)

    async def search(self, query: str, **filters: Any) -> list[dict[str, Any]]:
        words = [w for w in re.findall(r"\w+", query.lower()) if w]
        if not words:
            raise Invalid("query has no words")
        pat = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b", re.I)
        hits: list[dict[str, Any]] = []
        for cid, segs in self.transcripts.items():
            c = self.calls[cid]
            if filters.get("number") and filters["number"] not in c["caller"]:
                continue
            if filters.get("line") and c["line"] != filters["line"]:
                continue
            if filters.get("handler") and c["handler_id"] != filters["handler"]:
                continue
            if filters.get("incident") and c["incident_number"] != filters["incident"]:
                continue
            if filters.get("date_from") and c["arrived_at"] < filters["date_from"]:
                continue
            if filters.get("date_to") and c["arrived_at"] > filters["date_to"]:
                continue
            for seg in segs:
                if pat.search(seg["text"]):
                    # Like the real search: escape the text, then mark the words.
                    marked = pat.sub("\x02\\1\x03", seg["text"])
                    snippet = html.escape(marked, quote=False).replace(
                        "\x02", "<mark>").replace("\x03", "</mark>")
                    hits.append({"call_id": cid, "snippet": snippet,
                                 "offset": seg["start"], "channel": seg["channel"],
                                 "line": c["line"], "caller": c["caller"],
                                 "arrived_at": c["arrived_at"], "handler_id": c["handler_id"],
                                 "incident_number": c["incident_number"]})
        hits.sort(key=lambda h: h["arrived_at"], reverse=True)
        window = self.search_rank_window
        if window is not None and len(hits) > window:
            # Like the real search for very frequent words: only the newest matches are
            # ranked, and each hit says so (transcription.search.Hit).
            total = len(hits)
            hits = hits[:window]
            for h in hits:
                h.update(ranked_within_recent=window, matches_estimate=total,
                         scoring="bm25-estimated-idf")
        return hits[: int(filters.get("limit") or 50)]

    async def recording_file(self, call_id: str) -> tuple[Path, str]:
        self._call(call_id)
        if call_id not in self.recordings:
            raise NotFound(f"call {call_id} has no recording")
        return self.recordings[call_id]


def demo_backend(recordings_dir: Path) -> FakeBackend:
    """A FakeBackend with a few handlers, past calls and two waiting calls (for demos)."""
    fb = FakeBackend(handlers={"demo-handler": "Demo Handler", "h2": "Priya Shah",
                               "h3": "Tom Evans", "h4": "Aled Jones"},
                     recordings_dir=recordings_dir)
    now = time.time()
    fb.add_past_call("999", "+447700900123", arrived_at=now - 86400 * 3, handler_id="h2",
                     transcript=[("handler", "Police emergency, what is happening?"),
                                 ("caller", "Someone is trying to break into my car on Elm Road"),
                                 ("handler", "Are they still there now?"),
                                 ("caller", "Yes, two men with a crowbar")],
                     incident="WMP-20261120-0412", grade="1")
    fb.add_past_call("101", "+447700900123", arrived_at=now - 86400 * 20, handler_id="h3",
                     transcript=[("caller", "I want to report a stolen bicycle from my garden"),
                                 ("handler", "When did you last see the bicycle?")],
                     incident="WMP-20261103-1120", grade="3")
    fb.add_past_call("999", "+447700900555", arrived_at=now - 3600 * 5, handler_id="h4",
                     transcript=[("caller", "There is smoke coming from the house next door"),
                                 ("handler", "I am connecting you to the fire service as well")],
                     incident="WMP-20261123-0077", grade="1")
    for h in ("h2", "h3"):
        fb.handlers[h].update(state="available", reason="")
    return fb


def main() -> None:  # pragma: no cover - manual demo
    """Serve the pages against a demo FakeBackend."""
    import argparse
    import tempfile

    from aiohttp import web

    from config import WebSettings
    from console.app import create_app
    from console.users import create_user
    from store.db import Database

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=8080)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="console-demo-"))
    db = Database(tmp / "demo.sqlite")
    for role in ("handler", "supervisor", "auditor", "admin"):
        create_user(db, f"demo-{role}", "demo-password", [role])
    fb = demo_backend(tmp / "recordings")
    fb.arrive("101", "+447700900777", display_name="J SMITH")
    app = create_app(backend=fb, db=db, settings=WebSettings(port=args.port))
    app.cleanup_ctx.append(_simulate(fb))
    print(f"console demo on http://127.0.0.1:{args.port}/  users demo-handler, demo-supervisor,"
          " demo-auditor, demo-admin; password demo-password")
    web.run_app(app, host="127.0.0.1", port=args.port)


def _simulate(fb: FakeBackend) -> Any:  # pragma: no cover - manual demo
    """Offer a call to demo-handler whenever they are available; speak once answered."""
    import contextlib
    import random

    script = [("handler", "Police, what is your emergency?"),
              ("caller", "There's a man shouting and banging on my neighbour's door"),
              ("handler", "Is anyone injured? Can you see any weapons?"),
              ("caller", "I can't see a weapon, he sounds drunk")]

    async def loop() -> None:
        while True:
            await asyncio.sleep(3)
            h = fb.handlers["demo-handler"]
            if h["state"] == "available" and not h["offer"]:
                line = random.choice(["999", "101"])
                cid = fb.arrive(line, "+447700900123", display_name="MRS A JONES",
                                location="14 Elm Road, Birmingham B15 2TT", location_accuracy=12)
                await asyncio.sleep(2)
                fb.offer(cid, "demo-handler")
            elif h["call"]:
                cid = h["call"]
                said = len(fb.transcripts.get(cid, []))
                if said < len(script):
                    fb.say(cid, *script[said])
                elif not fb.calls[cid]["incident_number"]:
                    fb.link_incident(cid, f"WMP-DEMO-{random.randint(1000, 9999)}", "2")

    async def ctx(app: Any) -> AsyncIterator[None]:
        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx


if __name__ == "__main__":  # pragma: no cover
    main()
