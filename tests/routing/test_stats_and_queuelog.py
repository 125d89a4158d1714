"""Service-level figures, their replay from the queue log, and queue_log persistence."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing import LineSpec, QueueLogEntry, Router, RoutingError, ServiceLevel, replay
from store import queuelog
from store.db import Database

from .script import run

LINES = [LineSpec("999", 0, "999", answer_threshold=10, wrapup=0, callback_on_abandon=True),
         LineSpec("101", 1, "101", answer_threshold=60, wrapup=0, ageing_per_minute=0.2)]

SCRIPT = [
    (0, "login h1 999:5,101:5", ["h1 not_ready(login)"]),
    (0, "login h2 999:5", ["h2 not_ready(login)"]),
    (0, "arrive e1 999 111", ["queued e1 #1"]),
    (1, "arrive e2 999 222", ["queued e2 #2"]),
    (2, "arrive e3 999 333", ["queued e3 #3"]),
    (3, "arrive e4 999 444", ["queued e4 #4"]),
    (4, "arrive c1 101 555", ["queued c1 #1"]),
    (5, "ready h1", ["h1 available", "offer e1->h1", "h1 offered"]),
    (5, "answer e1 h1", ["connected e1 h1 wait=5", "h1 on_call"]),
    (15, "ready h2", ["h2 available", "offer e2->h2", "h2 offered"]),
    (15, "answer e2 h2", ["connected e2 h2 wait=14", "h2 on_call"]),
    (16, "reprio c1 0.5", ["queued c1 #1"]),
    (20, "hangup e3", ["abandoned e3 wait=18 pos=1 callback"]),
    (25, "end e1", ["completed e1 h1 talk=20", "h1 wrap_up", "h1 available",
                    "offer e4->h1", "h1 offered"]),
]


def play() -> tuple[Router, list[QueueLogEntry]]:
    r = Router(lines=LINES, offer_timeout=15)
    return r, run(r, SCRIPT)


def test_service_level_figures_are_exact():
    """SL = within / (answered + abandoned after the threshold); abandon rate =
    abandoned/offered, mean and p90 over answered. A call still waiting counts neither way:
    the 101 line, whose only call waits, has no SL (not 0 %)."""
    r, _ = play()
    assert r.service_level("999", 30) == ServiceLevel(
        line="999", threshold=10, offered=4, answered=2, answered_within=1, abandoned=1,
        abandoned_within=0, abandoned_after=1, rejected=0, service_level=1 / 3,
        abandon_rate=0.25, average_wait=9.5, p90_wait=14.0, waiting=1, longest_wait=27.0)
    assert r.service_level("101", 30) == ServiceLevel(
        line="101", threshold=60, offered=1, service_level=None, abandon_rate=0.0, waiting=1,
        longest_wait=26.0)


def test_service_level_over_an_interval():
    """since= counts only events at or after it; the longest current wait is still live."""
    r, _ = play()
    sl = r.service_level("999", 30, since=10)
    assert (sl.offered, sl.answered, sl.answered_within, sl.abandoned) == (0, 1, 0, 1)
    assert (sl.service_level, sl.p90_wait, sl.longest_wait) == (0.0, 14.0, 27.0)
    sl = r.service_level("999", 30, since=0, until=15)    # 15:00-15:15 style intervals
    assert (sl.offered, sl.answered, sl.answered_within, sl.abandoned) == (4, 1, 1, 0)
    sl = r.service_level("999", 30, since=15, until=30)
    assert (sl.offered, sl.answered, sl.answered_within, sl.abandoned) == (0, 1, 0, 1)
    with pytest.raises(RoutingError, match="unknown line 'nope'"):
        r.service_level("nope", 30)


def test_replay_of_the_log_equals_live_figures():
    """replay(entries) rebuilds every line's figures exactly, overall and per interval."""
    r, log = play()
    for since, until in ((None, None), (0, None), (4.5, None), (10, None), (20, None),
                         (None, 10), (0, 15), (15, 15.5), (5, 5), (20, 10)):
        rebuilt = replay(log, now=30, since=since, until=until)
        assert set(rebuilt) == {"999", "101"}
        for line in ("999", "101"):
            assert rebuilt[line] == r.service_level(line, 30, since=since, until=until)


def test_replay_ignores_orphan_rows():
    """CONNECT/ABANDON rows without their ENTER (log cut by since) do not crash replay."""
    rows = [QueueLogEntry(5, "x", "999", "h1", "CONNECT", {"wait": 3}),
            QueueLogEntry(6, "y", "999", "", "ABANDON", {}),
            QueueLogEntry(7, "z", "101", "", "REJECTED", {"status": 486, "threshold": 60})]
    out = replay(rows)
    assert list(out) == ["101"] and out["101"].rejected == 1 and out["101"].offered == 0


def test_queue_log_round_trip_through_sqlite_file(tmp_path):
    """Every entry survives a real SQLite file and a reopen; replay of the loaded rows
    equals the live figures; the table is append-only; load(since=) filters by time."""
    r, log = play()
    path = tmp_path / "cr.sqlite3"
    db = Database(path)
    assert db.migrate(queuelog.COMPONENT, queuelog.MIGRATIONS) == 1
    with db.transaction() as conn:
        ids = [queuelog.append(conn, e) for e in log]
    assert ids == list(range(1, len(log) + 1))
    db.close()

    db = Database(path)
    assert db.migrate(queuelog.COMPONENT, queuelog.MIGRATIONS) == 0
    loaded = queuelog.load(db)
    assert loaded == log
    events = {e.event for e in loaded}
    assert {"ENTER", "OFFER", "CONNECT", "ABANDON", "COMPLETE", "REPRIORITISE", "STATE",
            "CALLBACK_ADD"} <= events
    for line in ("999", "101"):
        assert replay(loaded, now=30)[line] == r.service_level(line, 30)
    assert queuelog.load(db, since=20) == [e for e in log if e.at >= 20]
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE queue_log SET event='X' WHERE id=1")
    db.close()


def test_queue_log_rolls_back_with_the_transaction(tmp_path):
    """An append inside a failed transaction leaves no row (state and log stay in step)."""
    db = Database(tmp_path / "q.sqlite3")
    db.migrate(queuelog.COMPONENT, queuelog.MIGRATIONS)
    with pytest.raises(RuntimeError):
        with db.transaction() as conn:
            queuelog.append(conn, QueueLogEntry(1.0, "c1", "999", "", "ENTER", {"a": [1, 2]}))
            raise RuntimeError("service failed after appending")
    assert queuelog.load(db) == []
    with db.transaction() as conn:
        queuelog.append(conn, QueueLogEntry(2.0, "c1", "999", "", "ENTER",
                                            {"bad": float("nan"), "nested": {"k": (1, 2)}}))
    assert queuelog.load(db)[0].data == {"bad": None, "nested": {"k": [1, 2]}}
    db.close()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=3),
    max_leaves=10)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.floats(0, 2e9, allow_nan=False), st.text(max_size=12),
                               st.sampled_from(["999", "101", ""]), st.text(max_size=8),
                               st.sampled_from(["ENTER", "CONNECT", "STATE"]),
                               st.dictionaries(st.text(max_size=8), JSON, max_size=4)),
                     max_size=8))
def test_any_entry_round_trips_through_the_table(rows):
    """Whatever JSON-able data an entry carries, load() gives back an equal entry."""
    entries = [QueueLogEntry(*r) for r in rows]
    db = Database(":memory:")
    db.migrate(queuelog.COMPONENT, queuelog.MIGRATIONS)
    with db.transaction() as conn:
        for e in entries:
            queuelog.append(conn, e)
    assert queuelog.load(db) == entries
    db.close()


def test_restart_restores_figures_and_callbacks_and_calls_back_lost_999s(tmp_path):
    """restore(load(db)) after a restart: same figures, same call-back list, and the 999
    caller who was waiting when the process died is closed as ABANDON and put on the list."""
    r, log = play()          # at t=25: e4 ringing h1, c1 waiting, e2 connected, cb1 pending
    db = Database(tmp_path / "cr.sqlite3")
    db.migrate(queuelog.COMPONENT, queuelog.MIGRATIONS)
    with db.transaction() as conn:
        for e in log:
            queuelog.append(conn, e)

    fresh = Router(lines=LINES, offer_timeout=15)
    fresh.handler_login("h1", 40, skills={"999": 5})
    rows = fresh.restore(queuelog.load(db), 40)
    assert [(e.event, e.call_id, e.data.get("reason")) for e in rows] == [
        ("COMPLETE", "e2", "restart"),
        ("ABANDON", "e4", "restart"), ("CALLBACK_ADD", "e4", "restart"),
        ("ABANDON", "c1", "restart")]
    with db.transaction() as conn:
        for e in rows:
            queuelog.append(conn, e)
    full = queuelog.load(db)
    for line in ("999", "101"):
        assert fresh.service_level(line, 40) == replay(full, now=40)[line]
    sl = fresh.service_level("999", 40)
    assert (sl.offered, sl.answered, sl.abandoned, sl.waiting) == (4, 2, 2, 0)
    assert [(c.cb_id, c.call_id, c.caller, c.wait) for c in fresh.callbacks()] == [
        ("cb1", "e3", "333", 18.0), ("cb2", "e4", "444", 37.0)]
    with pytest.raises(RoutingError, match="call 'e4' is already abandoned"):
        fresh.call_abandoned("e4", 41)
    with pytest.raises(RoutingError, match="call 'e1' already exists"):
        fresh.call_arrived("e1", "999", 41)
    fresh.call_arrived("e9", "999", 41)
    with pytest.raises(RoutingError, match="restore\\(\\) must be called before any call"):
        fresh.restore(full, 42)
    db.close()


@given(st.lists(st.tuples(st.sampled_from(["add", "remove"]), st.integers(0, 20),
                          st.floats(0, 1000, allow_nan=False)), max_size=200))
def test_open_legs_oldest_and_count_match_a_plain_dict(ops: list[tuple[str, int, float]]) -> None:
    """OpenLegs (heap with lazy deletion) answers count and oldest entry exactly like a
    dict scanned with min(), whatever the order of adds, re-adds and removals."""
    from routing.stats import OpenLegs

    legs, ref = OpenLegs(), {}
    for op, n, at in ops:
        cid = f"c{n}"
        if op == "add":
            legs.add(cid, at)
            ref[cid] = at
        elif cid in ref:
            legs.remove(cid)
            del ref[cid]
        assert len(legs) == len(ref)
        assert legs.oldest() == min(ref.values(), default=None)
