"""The transactional outbox: gap-free per-call seq, commit order, delivery marks.

The ``db`` tests run on both stores (SQLite, and a real PostgreSQL marked realparts);
PostgreSQL's claim (several publishers on one outbox) is tested at the end."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cad import schema
from cad.publisher import append_event
from store import outbox
from store.db import Database

from .samples import one_of_each


@pytest.fixture
def db(store_url: str) -> Iterator[Database]:
    """The outbox on SQLite and on PostgreSQL (overrides the folder's SQLite-only one)."""
    d = Database(store_url)
    d.migrate(outbox.COMPONENT, outbox.MIGRATIONS, postgresql=outbox.PG_MIGRATIONS)
    yield d
    d.close()


def _append(db: Database, call_id: str, n: int = 1, line: str = "999") -> list[int]:
    seqs = []
    for i in range(n):
        with db.transaction() as conn:
            seqs.append(outbox.append(conn, call_id=call_id, line=line, type="call.queued",
                                      payload={"event_id": f"{call_id}-{i}", "k": i}))
    return seqs


def test_seq_is_per_call_and_gap_free(db: Database) -> None:
    """Each call counts 1, 2, 3... independently of other calls."""
    assert _append(db, "a", 3) == [1, 2, 3]
    assert _append(db, "b", 2) == [1, 2]
    assert _append(db, "a", 1) == [4]


def test_rolled_back_append_leaves_no_gap(db: Database) -> None:
    """A transaction that fails after appending rolls the seq back too."""
    _append(db, "a", 2)
    with pytest.raises(RuntimeError), db.transaction() as conn:
        outbox.append(conn, call_id="a", line="999", type="x", payload={"event_id": "lost"})
        raise RuntimeError("state change failed")
    assert _append(db, "a", 1) == [3]
    assert [r.seq for r in outbox.for_call(db, "a")] == [1, 2, 3]
    assert "lost" not in {r.event_id for r in outbox.for_call(db, "a")}


def test_append_with_state_change_is_atomic(db: Database) -> None:
    """The outbox row and the caller's own row commit or vanish together."""
    db.execute("CREATE TABLE state (call_id TEXT NOT NULL, v TEXT)")
    with db.transaction() as conn:
        conn.execute("INSERT INTO state VALUES ('a', 'queued')")
        outbox.append(conn, call_id="a", line="999", type="x", payload={"event_id": "e1"})
    with pytest.raises(db.IntegrityError), db.transaction() as conn:
        outbox.append(conn, call_id="a", line="999", type="x", payload={"event_id": "e2"})
        conn.execute("INSERT INTO state VALUES (NULL, 'x')")  # NOT NULL -> fails
    assert outbox.depth(db) == 1
    assert [r.event_id for r in outbox.pending(db)] == ["e1"]


def test_append_outside_transaction_is_refused(db: Database) -> None:
    """append needs the caller's transaction (state change and message together)."""
    conn = db.connect_reader()
    with pytest.raises(ValueError, match="inside db.transaction"):
        outbox.append(conn, call_id="a", line="999", type="x", payload={"event_id": "e"})
    conn.close()


def test_payload_fn_receives_seq_and_seq_is_stored(db: Database) -> None:
    """payload_fn gets the assigned seq; the stored JSON carries it either way."""
    with db.transaction() as conn:
        outbox.append(conn, call_id="a", line="999", type="x",
                      payload_fn=lambda seq: {"event_id": "e1", "mine": seq * 10})
        outbox.append(conn, call_id="a", line="999", type="x",
                      payload={"event_id": "e2", "seq": 99})
    rows = outbox.pending(db)
    assert [json.loads(r.payload) for r in rows] == [
        {"event_id": "e1", "mine": 10, "seq": 1}, {"event_id": "e2", "seq": 2}]


@pytest.mark.parametrize(("kwargs", "error"), [
    ({}, "exactly one of payload_fn or payload"),
    ({"payload": {"x": 1}, "payload_fn": lambda s: {}}, "exactly one of payload_fn or payload"),
    ({"payload": {"x": 1}}, "needs an event_id"),
])
def test_append_argument_errors(db: Database, kwargs: dict, error: str) -> None:
    """Wrong arguments raise ValueError with a clear message and append nothing."""
    with pytest.raises(ValueError, match=error), db.transaction() as conn:
        outbox.append(conn, call_id="a", line="999", type="x", **kwargs)
    assert outbox.depth(db) == 0


def test_pending_in_commit_order_and_mark_delivered(db: Database) -> None:
    """pending() is global commit order; delivered rows leave it; depth counts the rest."""
    _append(db, "a", 2)
    _append(db, "b", 1)
    _append(db, "a", 1)
    rows = outbox.pending(db)
    assert [(r.call_id, r.seq) for r in rows] == [("a", 1), ("a", 2), ("b", 1), ("a", 3)]
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    assert outbox.mark_delivered(db, [rows[0].id, rows[2].id]) == 2
    assert outbox.mark_delivered(db, [rows[0].id]) == 0  # already delivered
    assert [(r.call_id, r.seq) for r in outbox.pending(db)] == [("a", 2), ("a", 3)]
    assert outbox.depth(db) == 2
    assert [(r.call_id, r.seq) for r in outbox.pending(db, limit=1)] == [("a", 2)]
    assert [(r.call_id, r.seq) for r in outbox.pending(db, after_id=rows[1].id)] == [("a", 3)]


def test_pending_via_reader_sees_only_committed(db: Database) -> None:
    """A reader connection does not see a row whose transaction is still open."""
    reader = db.connect_reader()
    with db.transaction() as conn:
        outbox.append(conn, call_id="a", line="999", type="x", payload={"event_id": "e"})
        assert outbox.pending(reader) == []
        assert outbox.depth(reader) == 0
    assert [r.event_id for r in outbox.pending(reader)] == ["e"]
    reader.close()


def test_purge_keeps_counters(db: Database) -> None:
    """Purging delivered rows keeps the call's counter: later seqs continue."""
    _append(db, "a", 3)
    outbox.mark_delivered(db, [r.id for r in outbox.pending(db)], now=100.0)
    assert outbox.purge_delivered(db, before=50.0) == 0
    assert outbox.purge_delivered(db, before=101.0) == 3
    assert _append(db, "a", 1) == [4]


def test_oldest_pending_age(db: Database) -> None:
    """Age of the oldest undelivered row, None when drained."""
    assert outbox.oldest_pending_age(db) is None
    with db.transaction() as conn:
        outbox.append(conn, call_id="a", line="999", type="x", payload={"event_id": "e"},
                      now=1000.0)
    assert outbox.oldest_pending_age(db, now=1012.5) == 12.5


def test_append_event_builds_validated_message(db: Database) -> None:
    """append_event stores the schema-valid CAD message with its seq and event id."""
    events = one_of_each("call-1")[:-1]  # the last sample belongs to another call
    with db.transaction() as conn:
        seqs = [append_event(conn, e, node="fcr1", line="999", strict=True) for e in events]
    assert seqs == list(range(1, len(events) + 1))
    rows = outbox.pending(db)
    for row, e in zip(rows, events, strict=True):
        msg = json.loads(row.payload)
        schema.validate(msg)
        assert (msg["seq"], msg["event_id"], row.event_id, row.type) == (
            row.seq, e.event_id, e.event_id, e.type)


def _writer(path: str, call_id: str, n: int) -> None:
    d = Database(path)
    for i in range(n):
        with d.transaction() as conn:
            outbox.append(conn, call_id=call_id, line="999", type="x",
                          payload={"event_id": f"{call_id}-{i}"})
    d.close()


def test_two_processes_appending_keep_seq_gap_free(store_url: str) -> None:
    """Concurrent writers (separate processes: two nodes on PostgreSQL) never share or
    skip a seq, and each call's rows are pending in seq order."""
    path = store_url
    Database(path).migrate(outbox.COMPONENT, outbox.MIGRATIONS,
                           postgresql=outbox.PG_MIGRATIONS)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, "shared", 100)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    d = Database(path)
    assert [r.seq for r in outbox.for_call(d, "shared")] == list(range(1, 201))
    rows = outbox.pending(d, limit=1000)
    assert [r.seq for r in rows] == list(range(1, 201))  # commit order == seq order
    d.close()


def test_append_event_skips_live_segments(db: Database) -> None:
    """Live transcript segments are not CAD messages: nothing appended, None returned."""
    import callevents as ev
    seg = ev.TranscriptSegment(call_id="c", at=1.0, channel="caller", text="hi", start=0.0,
                               end=1.0, final=True)
    with db.transaction() as conn:
        assert append_event(conn, seg, node="n", line="999") is None
    assert outbox.depth(db) == 0


def test_append_event_outside_transaction_refused(db: Database) -> None:
    """append_event needs the caller's transaction."""
    conn = db.connect_reader()
    with pytest.raises(ValueError, match="inside db.transaction"):
        append_event(conn, one_of_each()[0], node="n", line="999")
    conn.close()


def test_invalid_message_is_logged_but_queued(db: Database,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A schema failure never breaks the caller's transaction: logged as an error, still sent."""
    from structlog.testing import capture_logs

    from cad import messages
    real = messages.to_message
    monkeypatch.setattr(messages, "to_message",
                        lambda *a, **k: {**real(*a, **k), "stray": 1})
    with capture_logs() as logs, db.transaction() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS marker (x INTEGER)")
        conn.execute("INSERT INTO marker VALUES (1)")
        assert append_event(conn, one_of_each()[0], node="n", line="999") == 1
    assert db.query_one("SELECT COUNT(*) FROM marker")[0] == 1
    assert outbox.depth(db) == 1
    assert logs[0]["event"] == "cad.message.invalid"
    assert logs[0]["log_level"] == "error"
    assert "stray" in logs[0]["error"]
    with pytest.raises(schema.SchemaError), db.transaction() as conn:
        append_event(conn, one_of_each()[0], node="n", line="999", strict=True)


def test_unbuildable_message_is_dropped_without_breaking_the_call(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """A builder crash is logged; the caller's other writes commit and no seq is used up."""
    from structlog.testing import capture_logs

    from cad import messages

    def boom(*a: object, **k: object) -> dict:
        raise TypeError("bug")
    e = one_of_each()[0]
    with db.transaction() as conn:
        assert append_event(conn, e, node="n", line="999") == 1
    monkeypatch.setattr(messages, "to_message", boom)
    with capture_logs() as logs, db.transaction() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS marker (x INTEGER)")
        conn.execute("INSERT INTO marker VALUES (1)")
        assert append_event(conn, e, node="n", line="999") is None
    assert db.query_one("SELECT COUNT(*) FROM marker")[0] == 1
    assert logs[0]["event"] == "cad.message.build_failed"
    monkeypatch.undo()
    with db.transaction() as conn:
        assert append_event(conn, one_of_each()[1], node="n", line="999") == 2


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.booleans()), max_size=40))
def test_property_seq_gap_free_under_rollbacks(tmp_path_factory: pytest.TempPathFactory,
                                               ops: list[tuple[str, bool]]) -> None:
    """Any mix of committed and rolled-back appends leaves each call's seqs exactly 1..n
    and pending() in commit order."""
    d = Database(tmp_path_factory.mktemp("prop") / "p.sqlite3")
    d.migrate(outbox.COMPONENT, outbox.MIGRATIONS)
    committed: list[tuple[str, int]] = []
    for i, (call_id, commit) in enumerate(ops):
        try:
            with d.transaction() as conn:
                seq = outbox.append(conn, call_id=call_id, line="999", type="x",
                                    payload={"event_id": f"e{i}"})
                if not commit:
                    raise KeyError("rollback")
            committed.append((call_id, seq))
        except KeyError:
            pass
    assert [(r.call_id, r.seq) for r in outbox.pending(d, limit=100)] == committed
    for call_id in "abc":
        seqs = [s for c, s in committed if c == call_id]
        assert seqs == list(range(1, len(seqs) + 1))
    d.close()


@pytest.mark.realparts
def test_publishers_claim_whole_calls_and_never_share_one(pg_url: str) -> None:
    """PostgreSQL, several publishers on one outbox: each claim takes whole calls (every
    pending row, in seq order); a second publisher skips the calls the first holds and
    never gets a later row of such a call; marked rows leave the outbox at commit; a
    publisher that dies unmarked gives its calls back whole, event ids unchanged."""
    d = Database(pg_url)
    d.migrate(outbox.COMPONENT, outbox.MIGRATIONS, postgresql=outbox.PG_MIGRATIONS)
    for call_id, n in (("a", 3), ("b", 2), ("c", 1)):
        _append(d, call_id, n)
    one, two = d.connect_reader(), d.connect_reader()
    one.execute("BEGIN")
    got1 = outbox.claim(one, calls=2)
    assert [(r.call_id, r.seq) for r in got1] == [("a", 1), ("a", 2), ("a", 3),
                                                  ("b", 1), ("b", 2)]
    _append(d, "a", 1)  # a writer is never held up by a claim; a's seq 4 arrives
    two.execute("BEGIN")
    got2 = outbox.claim(two)
    assert [(r.call_id, r.seq) for r in got2] == [("c", 1)]  # not a4: 'a' is held
    assert outbox.mark_claimed(two, [r.id for r in got2]) == 1
    two.execute("COMMIT")
    assert outbox.mark_claimed(one, [r.id for r in got1 if r.call_id == "a"]) == 3
    one.close()  # dies before commit: nothing it marked counts, its calls are free
    deadline = time.monotonic() + 10  # (once the server has seen the connection go)
    while True:
        two.execute("BEGIN")
        got = outbox.claim(two)
        if got or time.monotonic() > deadline:
            break
        two.execute("ROLLBACK")
        time.sleep(0.05)
    assert [(r.call_id, r.seq, r.event_id) for r in got] == [
        ("a", 1, "a-0"), ("a", 2, "a-1"), ("a", 3, "a-2"), ("b", 1, "b-0"), ("b", 2, "b-1"),
        ("a", 4, "a-0")]
    outbox.mark_claimed(two, [r.id for r in got])
    two.execute("COMMIT")
    assert outbox.depth(d) == 0
    two.close()
    d.close()


@pytest.mark.realparts
def test_concurrent_claimers_deliver_each_call_once_in_order(pg_url: str) -> None:
    """Four publishers draining 40 calls while two writers append: every row is claimed
    exactly once, and the rows of each call are claimed in seq order."""
    d = Database(pg_url)
    d.migrate(outbox.COMPONENT, outbox.MIGRATIONS, postgresql=outbox.PG_MIGRATIONS)
    calls = [f"k{i}" for i in range(40)]
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()
    done = threading.Event()

    def write(ids: list[str]) -> None:
        w = Database(pg_url)
        for round_ in range(5):
            for cid in ids:
                with w.transaction() as conn:
                    outbox.append(conn, call_id=cid, line="999", type="x",
                                  payload={"event_id": f"{cid}-{round_}"})
        w.close()

    def publish() -> None:
        conn = d.connect_reader()
        while True:
            conn.execute("BEGIN")
            rows = outbox.claim(conn, limit=7, calls=3)
            with lock:
                seen.extend((r.call_id, r.seq) for r in rows)
            outbox.mark_claimed(conn, [r.id for r in rows])
            conn.execute("COMMIT")
            if not rows and done.is_set() and outbox.depth(conn) == 0:
                break
        conn.close()
    writers = [threading.Thread(target=write, args=(calls[i::2],)) for i in range(2)]
    readers = [threading.Thread(target=publish) for _ in range(4)]
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join(120)
    done.set()
    for t in readers:
        t.join(120)
    assert len(seen) == len(set(seen)) == 200
    for cid in calls:
        assert [s for c, s in seen if c == cid] == [1, 2, 3, 4, 5]
    d.close()
