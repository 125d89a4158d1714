"""A tiny table language for routing scenarios: ``(time, command, expected actions)``.

Commands::

    login h1 999:5,101:3   ready h1   notready h1 <reason>   logout h1   wrapup h1
    skills h1 101:5        arrive c1 101 [caller]   hangup c1   answer c1 h1
    fail c1 h1 <reason>    end c1     tick   xline c1 999 [tail]   xhandler c1 h2
    reprio c1 0.5          take cb1 h1   done cb1 <outcome>

Expected actions are written short (QueueLogEntry rows are not listed; they are checked
by the replay tests): ``offer c1->h1``, ``cancel c1 h1 no-answer``, ``reject c1 486``,
``queued c1 #2``, ``connected c1 h1 wait=3``, ``abandoned c1 wait=5 pos=2 [callback]``,
``completed c1 h1 talk=30``, ``h1 available``, ``h1 not_ready(missed call)``.
"""

from __future__ import annotations

from routing import (
    Abandoned,
    Action,
    CancelOffer,
    Completed,
    Connected,
    HandlerChanged,
    Offer,
    Queued,
    QueueLogEntry,
    Reject,
    Router,
)


def short(a: Action) -> str | None:
    if isinstance(a, Offer):
        return f"offer {a.call_id}->{a.handler_id}"
    if isinstance(a, CancelOffer):
        return f"cancel {a.call_id} {a.handler_id} {a.reason}"
    if isinstance(a, Reject):
        return f"reject {a.call_id} {a.status}"
    if isinstance(a, Queued):
        return f"queued {a.call_id} #{a.position}"
    if isinstance(a, Connected):
        return f"connected {a.call_id} {a.handler_id} wait={a.wait:g}"
    if isinstance(a, Abandoned):
        return (f"abandoned {a.call_id} wait={a.wait:g} pos={a.position}"
                + (" callback" if a.callback else ""))
    if isinstance(a, Completed):
        return f"completed {a.call_id} {a.handler_id} talk={a.talk:g}"
    if isinstance(a, HandlerChanged):
        return f"{a.handler_id} {a.state}" + (f"({a.reason})" if a.reason else "")
    if isinstance(a, QueueLogEntry):
        return None
    raise AssertionError(f"unexpected action {a!r}")


def skills(spec: str) -> dict[str, int]:
    return {k: int(v) for k, v in (p.split(":") for p in spec.split(","))}


def apply(r: Router, t: float, command: str) -> list[Action]:
    op, *args = command.split()
    match op:
        case "login":
            return r.handler_login(args[0], t, skills=skills(args[1]))
        case "skills":
            return r.set_skills(args[0], t, skills=skills(args[1]))
        case "ready":
            return r.set_available(args[0], t)
        case "notready":
            return r.set_not_ready(args[0], t, reason=" ".join(args[1:]))
        case "logout":
            return r.handler_logout(args[0], t)
        case "wrapup":
            return r.end_wrapup(args[0], t)
        case "arrive":
            return r.call_arrived(args[0], args[1], t, caller=args[2] if len(args) > 2 else "")
        case "hangup":
            return r.call_abandoned(args[0], t)
        case "answer":
            return r.offer_answered(args[0], args[1], t)
        case "fail":
            return r.offer_failed(args[0], args[1], t, reason=args[2])
        case "end":
            return r.call_ended(args[0], t)
        case "tick":
            return r.tick(t)
        case "xline":
            return r.transfer_to_line(args[0], args[1], t, head=len(args) < 3)
        case "xhandler":
            return r.transfer_to_handler(args[0], args[1], t)
        case "reprio":
            return r.reprioritise(args[0], t, priority=float(args[1]))
        case "take":
            return r.take_callback(args[0], args[1], t)
        case "done":
            return r.complete_callback(args[0], t, outcome=args[1])
    raise AssertionError(f"unknown command {command!r}")


def run(r: Router, rows: list[tuple[float, str, list[str]]]) -> list[QueueLogEntry]:
    """Apply each row and assert its actions (in order); returns the queue log."""
    log: list[QueueLogEntry] = []
    for t, command, expected in rows:
        actions = apply(r, t, command)
        log.extend(a for a in actions if isinstance(a, QueueLogEntry))
        got = [s for s in map(short, actions) if s is not None]
        assert got == expected, f"at t={t} {command!r}:\n got      {got}\n expected {expected}"
    return log
