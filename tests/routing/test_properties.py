"""Property-based tests: random sequences of control-room events against the Router.

A shadow model is rebuilt only from the actions the router returns (Queued, Offer,
CancelOffer, Connected, Abandoned, Completed, Reject, HandlerChanged) plus what the test
itself asked for (line of each call, supervisor priorities, directed transfers). After
every step the invariants are checked against that model, not against router internals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from routing import (
    Abandoned,
    Action,
    CancelOffer,
    Completed,
    Connected,
    HandlerChanged,
    LineSpec,
    Offer,
    Queued,
    QueueLogEntry,
    Reject,
    Router,
    RoutingError,
    replay,
)

LINES = [
    LineSpec("999", 0, "999", wrapup=3, callback_on_abandon=True, answer_threshold=10),
    LineSpec("101", 1, "101", wrapup=0, max_queue=4, overflow="busy", ageing_per_minute=0.5),
    LineSpec("101q", 1, "101", wrapup=2, ageing_per_minute=0.0, answer_threshold=30),
    LineSpec("bsl", 2, "bsl", wrapup=5, overflow="busy"),
]
SPEC = {x.name: x for x in LINES}
HANDLERS = ["h0", "h1", "h2"]
SKILLS = st.dictionaries(st.sampled_from(["999", "101", "bsl"]), st.integers(1, 10),
                         min_size=1, max_size=3)
TERMINAL_ACTIONS = (Abandoned, Completed, Reject)


@dataclass
class MCall:
    line: str
    klass: int
    order: int
    """Model FIFO key inside the line (kept on RONA; below all on a head transfer)."""
    status: str = "waiting"    # waiting | offered | connected | ended
    handler: str | None = None
    target: str | None = None
    reprioritised: bool = False
    terminals: int = 0
    excluded: str | None = None
    """Whoever transferred the call to a line's queue: never offered it on that leg."""


class RouterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.n = 0
        self.order = 0
        self.head = 0
        self.log: list[QueueLogEntry] = []
        self.calls: dict[str, MCall] = {}
        self.hstate: dict[str, str] = {}
        self.hcall: dict[str, str | None] = {}
        self.hskills: dict[str, dict[str, int]] = {}
        self.reprioritising: str | None = None

    @initialize(strategy=st.sampled_from(["longest-idle", "least-calls"]),
                rona=st.booleans(), staff=st.lists(st.tuples(SKILLS, st.booleans()),
                                                   min_size=len(HANDLERS),
                                                   max_size=len(HANDLERS)))
    def make(self, strategy: str, rona: bool, staff: list[tuple[dict[str, int], bool]]) -> None:
        self.r = Router(lines=LINES, offer_timeout=15, strategy=strategy, rona_not_ready=rona)
        for h, (skills, ready) in zip(HANDLERS, staff, strict=True):
            self.hskills[h] = skills
            self.do(self.r.handler_login, h, self.now, skills=skills)
            if ready:
                self.do(self.r.set_available, h, self.now)

    # ------------------------------------------------------------ model update
    def apply(self, actions: list[Action]) -> None:
        offers: list[Offer] = []
        for a in actions:
            if isinstance(a, QueueLogEntry):
                self.log.append(a)
                continue
            if isinstance(a, HandlerChanged):
                self.hstate[a.handler_id] = a.state
                if a.state == "logged_out":
                    for c in self.calls.values():
                        if c.status == "waiting" and c.target == a.handler_id:
                            c.target = None
                if a.state not in ("offered", "on_call"):
                    self.hcall[a.handler_id] = None
                continue
            c = self.calls[a.call_id]
            assert c.status != "ended", f"action {a} after the call ended"
            if isinstance(a, Offer):
                assert c.status == "waiting", f"double offer of {a.call_id}"
                assert self.hstate.get(a.handler_id) == "available", \
                    f"offer to {a.handler_id} in state {self.hstate.get(a.handler_id)}"
                assert self.hcall.get(a.handler_id) is None, f"{a.handler_id} holds two"
                assert a.transfer == (c.target is not None)
                if c.target is not None:
                    assert a.handler_id == c.target, "directed call offered to another"
                assert a.handler_id != c.excluded, f"{a.call_id} offered back to its transferor"
                c.status, c.handler = "offered", a.handler_id
                self.hcall[a.handler_id] = a.call_id
                offers.append(a)
            elif isinstance(a, CancelOffer):
                assert c.status == "offered" and c.handler == a.handler_id
                self.hcall[a.handler_id] = None
                c.handler = None
                c.status = "waiting-cancelled"
            elif isinstance(a, Queued):
                assert c.status in ("waiting", "waiting-cancelled", "offered", "new")
                if c.status == "offered":          # offer_failed reported by telephony
                    self.hcall[c.handler or ""] = None
                if c.status in ("offered", "waiting-cancelled"):
                    c.target = None                # a failed directed offer goes to the line
                elif c.status == "waiting" and self.reprioritising != a.call_id:
                    c.target = None                # directed transfer waited out: the line
                c.status, c.handler = "waiting", None
                self.check_position(a.call_id, a.position)
            elif isinstance(a, Connected):
                assert c.status == "offered" and c.handler == a.handler_id
                c.status, c.excluded = "connected", None
            elif isinstance(a, TERMINAL_ACTIONS):
                c.terminals += 1
                c.status = "ended"
                if c.handler is not None:
                    self.hcall[c.handler] = None
        self.check_offers(offers)

    def check_position(self, cid: str, pos: int | None) -> None:
        """Position is exact about classes and about order inside the call's own line:
        every waiting call of a more urgent class (same skill) and every earlier call of
        the same line is ahead; no less urgent or later same-line call is."""
        c = self.calls[cid]
        if c.target is not None:
            return
        skill = SPEC[c.line].skill
        others = [w for k, w in self.calls.items() if k != cid and w.status == "waiting"
                  and w.target is None and SPEC[w.line].skill == skill]
        same = [w for w in others if w.line == c.line and not w.reprioritised
                and not c.reprioritised and w.klass == c.klass]
        lo = 1 + sum(w.klass < c.klass for w in others) + sum(w.order < c.order for w in same)
        hi = 1 + sum(w.klass <= c.klass for w in others) - sum(w.order > c.order for w in same)
        assert pos is not None and lo <= pos <= hi, f"{cid} at {pos}, expected {lo}..{hi}"

    def capable(self, h: str, c: MCall) -> bool:
        return SPEC[c.line].skill in self.hskills.get(h, {})

    def check_offers(self, offers: list[Offer]) -> None:
        """No offered call was less urgent than one still waiting that its handler could
        take; within a line, FIFO (modulo re-prioritisation and ageing, which keep order)."""
        for o in offers:
            c = self.calls[o.call_id]
            for wid, w in self.calls.items():
                if w.status != "waiting":
                    continue
                if w.target is not None:
                    if w.target == o.handler_id:
                        assert w.klass > c.klass or (w.klass == c.klass and c.target), \
                            f"{o.call_id} offered to {o.handler_id} while directed {wid} waits"
                    continue
                if not self.capable(o.handler_id, w) or w.excluded == o.handler_id:
                    continue
                assert w.klass >= c.klass, \
                    f"{o.call_id} (class {c.klass}) offered while {wid} (class {w.klass}) waits"
                if (w.line == c.line and w.klass == c.klass and not w.reprioritised
                        and not c.reprioritised and c.target is None):
                    assert w.order > c.order, f"FIFO: {o.call_id} offered before {wid}"

    def do(self, fn, *args, **kw) -> list[Action]:
        actions = fn(*args, **kw)
        self.apply(actions)
        return actions

    # ------------------------------------------------------------------- rules
    @rule(lines=st.lists(st.sampled_from([x.name for x in LINES]), min_size=1, max_size=3))
    def arrive(self, lines: list[str]) -> None:
        for line in lines:
            self.arrive_one(line)

    def arrive_one(self, line: str) -> None:
        spec = SPEC[line]
        self.n += 1
        self.order += 1
        cid = f"c{self.n}"
        queued = sum(1 for c in self.calls.values()
                     if c.line == line and c.status == "waiting" and c.target is None)
        staffed = any(spec.skill in self.hskills[h] for h, s in self.hstate.items()
                      if s != "logged_out")
        overflow = ("queue-full" if spec.max_queue and queued >= spec.max_queue
                    else None if staffed else "no-handlers")
        self.calls[cid] = MCall(line, spec.priority, self.order, status="new")
        actions = self.do(self.r.call_arrived, cid, line, self.now, caller=f"0770{self.n}")
        kinds = [type(a) for a in actions if not isinstance(a, QueueLogEntry)]
        if overflow and spec.overflow == "busy" and spec.priority != 0:
            assert kinds == [Reject], f"{cid} on {line} ({overflow}) not rejected: {kinds}"
        else:
            assert kinds[0] is Queued, f"{cid} on {line} not queued: {kinds}"
            assert actions[1].overflow == overflow

    @rule(data=st.data())
    def call_event(self, data) -> None:
        """One legal event on a live call: hang-up, answer, offer failure, end, transfer,
        re-prioritisation (merged into one rule so most steps move a call along)."""
        by_status: dict[str, list[str]] = {}
        for cid, c in sorted(self.calls.items()):
            by_status.setdefault(c.status, []).append(cid)
        kinds = {"waiting": ["hangup", "reprioritise"],
                 "offered": ["answer", "answer", "answer", "fail", "hangup"],
                 "connected": ["end", "end", "transfer_line", "transfer_handler"]}
        # choose the kind of move first: waiting calls outnumber the others and would
        # otherwise crowd out answers, ends and transfers
        ops = [(status, op) for status, lst in kinds.items() if by_status.get(status)
               for op in lst]
        if not ops:
            return
        status, op = data.draw(st.sampled_from(ops))
        cid = data.draw(st.sampled_from(by_status[status]))
        c = self.calls[cid]
        if op == "hangup":
            self.do(self.r.call_abandoned, cid, self.now)
        elif op == "answer":
            self.do(self.r.offer_answered, cid, c.handler, self.now)
        elif op == "fail":
            reason = data.draw(st.sampled_from(["no-answer", "rejected", "busy", "cancelled", "error"]))
            self.do(self.r.offer_failed, cid, c.handler, self.now, reason=reason)
        elif op == "end":
            self.do(self.r.call_ended, cid, self.now)
        elif op == "reprioritise":
            p = data.draw(st.floats(0, 3, allow_nan=False))
            c.klass, c.reprioritised = int(math.floor(p)), True
            self.reprioritising = cid
            self.do(self.r.reprioritise, cid, self.now, priority=p)
            self.reprioritising = None
        elif op == "transfer_line":
            line = data.draw(st.sampled_from([x.name for x in LINES]))
            head = data.draw(st.booleans())
            c.excluded = c.handler
            c.target = None                    # a queue transfer ends any directed leg
            c.line, c.reprioritised, c.status = line, False, "new"
            c.klass = min(c.klass, SPEC[line].priority)   # a transfer never loses urgency
            if head:
                self.head -= 1
                c.order = self.head
            else:
                self.order += 1
                c.order = self.order
            self.do(self.r.transfer_to_line, cid, line, self.now, head=head)
        else:
            h = data.draw(st.sampled_from(HANDLERS))
            if self.hstate.get(h, "logged_out") == "logged_out" or c.handler == h:
                try:
                    self.r.transfer_to_handler(cid, h, self.now)
                except RoutingError:
                    return
                raise AssertionError("transfer to a logged-out handler or to self accepted")
            c.status, c.target = "new", h
            self.do(self.r.transfer_to_handler, cid, h, self.now)

    @rule(h=st.sampled_from(HANDLERS), skills=SKILLS,
          op=st.sampled_from(["ready", "ready", "not_ready", "logout", "end_wrapup", "login",
                              "skills"]))
    def handler_op(self, h: str, skills: dict[str, int], op: str) -> None:
        """A handler event; illegal ones must raise RoutingError naming the state."""
        state = self.hstate[h]
        if op == "skills":
            self.hskills[h] = skills
            self.do(self.r.set_skills, h, self.now, skills=skills)
            return
        legal = {"ready": state in ("not_ready", "available", "wrap_up"),
                 "not_ready": state in ("not_ready", "available", "offered", "wrap_up"),
                 "logout": state in ("not_ready", "available", "offered", "wrap_up"),
                 "end_wrapup": state == "wrap_up", "login": state == "logged_out"}[op]
        fn = {"ready": self.r.set_available, "logout": self.r.handler_logout,
              "end_wrapup": self.r.end_wrapup,
              "not_ready": lambda h, now: self.r.set_not_ready(h, now, reason="break"),
              "login": lambda h, now: self.r.handler_login(h, now, skills=skills)}[op]
        if not legal:
            try:
                fn(h, self.now)
            except RoutingError as e:
                assert e.state == state
                return
            raise AssertionError(f"{op} accepted in state {state}")
        if op == "login":
            self.hskills[h] = skills
        self.do(fn, h, self.now)

    @rule(end=st.booleans())
    def pickup(self, end: bool) -> None:
        """Every ringing handler answers (and, if ``end``, the connected calls end)."""
        for cid, c in sorted(self.calls.items()):
            if c.status == "offered":
                self.do(self.r.offer_answered, cid, c.handler, self.now)
            elif c.status == "connected" and end:
                self.do(self.r.call_ended, cid, self.now)

    @rule(dt=st.sampled_from([0.0, 0.5, 2.0, 5.0, 14.9, 15.0, 30.0, 90.0]))
    def advance(self, dt: float) -> None:
        self.now += dt
        self.do(self.r.tick, self.now)

    @precondition(lambda self: self.r.callbacks())
    @rule(data=st.data(), h=st.sampled_from(HANDLERS))
    def callback(self, data, h: str) -> None:
        cb = data.draw(st.sampled_from(self.r.callbacks()))
        if cb.state == "pending" and self.hstate.get(h, "logged_out") != "logged_out":
            self.log += self.r.take_callback(cb.cb_id, h, self.now)
        else:
            self.log += self.r.complete_callback(cb.cb_id, self.now, outcome="reached")

    # -------------------------------------------------------------- invariants
    @invariant()
    def nothing_waits_while_a_capable_handler_is_free(self) -> None:
        """After every step: no waiting call has an available handler able to take it."""
        if not hasattr(self, "r"):
            return
        free = [h for h, s in self.hstate.items() if s == "available"]
        for cid, c in self.calls.items():
            if c.status != "waiting":
                continue
            for h in free:
                if h == c.excluded:
                    continue
                assert not (c.target == h or (c.target is None and self.capable(h, c))), \
                    f"{cid} waits while {h} is available"

    @invariant()
    def model_agrees_with_router(self) -> None:
        """Handler states and holdings, and the calls' status, match the router's view."""
        if not hasattr(self, "r"):
            return
        snap = self.r.snapshot(self.now)
        for h, s in self.hstate.items():
            assert snap["handlers"][h]["state"] == s
            assert snap["handlers"][h]["call_id"] == self.hcall.get(h)
        for cid, c in self.calls.items():
            pos = self.r.position(cid)
            expected = {"waiting": "int>0", "offered": 0, "connected": None, "ended": None}
            if expected[c.status] == "int>0":
                self.check_position(cid, pos)
            else:
                assert pos == expected[c.status]
            assert c.terminals == (1 if c.status == "ended" else 0)

    @invariant()
    def stats_equal_replay_of_queue_log(self) -> None:
        """Live service level of every line == the one rebuilt from the queue log."""
        if not hasattr(self, "r"):
            return
        rebuilt = replay(self.log, now=self.now)
        for line in SPEC:
            live = self.r.service_level(line, self.now)
            if line in rebuilt:
                assert rebuilt[line] == live
            else:
                assert (live.offered, live.rejected, live.waiting) == (0, 0, 0)
        since, until = self.now - 60, self.now - 5
        rebuilt = replay(self.log, now=self.now, since=since, until=until)
        for line, sl in rebuilt.items():
            assert sl == self.r.service_level(line, self.now, since=since, until=until)

    @invariant()
    def queue_log_tells_every_handler_move(self) -> None:
        """STATE rows chain (each 'from' is the previous 'state') and end in the live state."""
        last: dict[str, str] = {}
        for e in self.log:
            if e.event == "STATE":
                assert e.data["from"] == last.get(e.handler_id, "logged_out")
                last[e.handler_id] = e.data["state"]
        assert last == self.hstate

    def teardown(self) -> None:
        """Restart from the log reproduces figures and call-backs; then drain: every call
        reaches exactly one terminal state."""
        if not hasattr(self, "r"):
            return
        fresh = Router(lines=LINES, offer_timeout=15)
        rows = fresh.restore(self.log, self.now)
        rebuilt = replay(self.log + rows, now=self.now)
        for line in SPEC:
            if line in rebuilt:
                assert fresh.service_level(line, self.now) == rebuilt[line]
        lost_999 = {cid for cid, c in self.calls.items()
                    if c.status in ("waiting", "offered") and c.line == "999"}
        before = {(cb.cb_id, cb.call_id, cb.state) for cb in self.r.callbacks()}
        after = {(cb.cb_id, cb.call_id, cb.state) for cb in fresh.callbacks()}
        assert before <= after
        assert {cid for (_, cid, _) in after - before} == lost_999
        for cid, c in list(self.calls.items()):
            if c.status in ("waiting", "offered"):
                self.do(self.r.call_abandoned, cid, self.now)
            elif c.status == "connected":
                self.do(self.r.call_ended, cid, self.now)
        assert all(c.terminals == 1 for c in self.calls.values())
        assert self.r.calls == {}
        assert len(self.r.queue) == 0


class TestRouterMachine(RouterMachine.TestCase):
    """Random control-room sequences (kept under ~15 s for the default run)."""

    settings = settings(max_examples=60, stateful_step_count=60, deadline=None,
                        suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.slow
class TestRouterMachineLong(RouterMachine.TestCase):
    """The same machine, many more and longer sequences (``-m slow``)."""

    settings = settings(max_examples=300, stateful_step_count=100, deadline=None,
                        suppress_health_check=[HealthCheck.too_slow])
