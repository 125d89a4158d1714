"""The call index in time partitions (issue 15 item 4): searched newest first within a
budget, each result saying how far back it looked, continued further back on request;
filters, fuzzy matching and retranscription across partitions; a database with the
single index of before is searchable as it is and split into partitions at migration."""

from __future__ import annotations

import pytest

from store import calls
from store.db import Database
from transcription import store as tstore
from transcription.search import SearchResult, TranscriptSearch

from .test_search import _call, _transcript


@pytest.fixture
def small_parts(monkeypatch):
    monkeypatch.setattr(tstore, "PARTITION_ROWS", 2)


@pytest.fixture
def seven(db, small_parts):
    """Calls n1..n7 at 1000..7000 s, each saying "smoke"; partitions of 2 rows:
    (n1 n2) (n3 n4) (n5 n6) (n7), n3 and n6 on line 101."""
    for i in range(1, 8):
        _call(db, f"n{i}", line="101" if i in (3, 6) else "999", caller=f"0{i}", at=1000.0 * i,
              handler="h1" if i % 2 else "h2")
        _transcript(db, f"n{i}", [("caller", 0.0, 2.0, f"there is smoke coming from number {i}")])
    return db


def ids(hits):
    return [h.call_id for h in hits]


def test_rows_fill_partitions_newest_last(seven):
    parts = TranscriptSearch(seven).partitions()
    assert [(p.rows, p.min_at, p.max_at) for p in parts] == [
        (1, 7000.0, 7000.0), (2, 5000.0, 6000.0), (2, 3000.0, 4000.0), (2, 1000.0, 2000.0)]
    assert len({p.fts for p in parts}) == 4


def test_whole_index_within_budget_is_complete(seven):
    res = TranscriptSearch(seven).search("smoke")
    assert isinstance(res, SearchResult) and isinstance(res, list)
    assert sorted(ids(res)) == [f"n{i}" for i in range(1, 8)]
    assert (res.complete, res.searched_back_to, res.continue_before, res.partitions_searched) == (True, None, None, 4)
    assert res.coverage()["complete"] is True


def test_row_budget_stops_and_continues_further_back_without_repeats(seven):
    s = TranscriptSearch(seven, max_scan_rows=3)
    first = s.search("smoke")
    assert sorted(ids(first)) == ["n5", "n6", "n7"]
    # every call after 4000 s (the newest call not searched) was searched
    assert (first.complete, first.searched_back_to, first.reason, first.partitions_searched) == (
        False, 4000.0, "budget", 2)
    second = s.search("smoke", before=first.continue_before)
    assert sorted(ids(second)) == ["n3", "n4"]
    assert (second.complete, second.searched_back_to) == (False, 2000.0)
    third = s.search("smoke", before=second.continue_before)
    assert sorted(ids(third)) == ["n1", "n2"] and third.complete
    assert len(set(ids(first)) | set(ids(second)) | set(ids(third))) == 7


def test_time_budget_reads_the_newest_partition_only_when_spent(seven):
    res = TranscriptSearch(seven, budget_ms=0).search("smoke")
    assert ids(res) == ["n7"]
    assert (res.complete, res.searched_back_to, res.reason) == (False, 6000.0, "budget")


def test_time_range_reads_only_its_partitions_and_is_complete(seven):
    res = TranscriptSearch(seven, max_scan_rows=3).search("smoke", since=2500, until=5500)
    assert sorted(ids(res)) == ["n3", "n4", "n5"]
    assert res.complete and res.partitions_searched == 2  # (n5 n6) and (n3 n4)


@pytest.mark.parametrize("calls_first_max", [0, 1000])
def test_filters_across_partitions(seven, calls_first_max):
    s = TranscriptSearch(seven, calls_first_max=calls_first_max)
    assert sorted(ids(s.search("smoke", line="101"))) == ["n3", "n6"]
    assert ids(s.search("smoke", caller="02")) == ["n2"]
    assert sorted(ids(s.search("smoke", handler_id="h2", since=1500, until=6500))) == ["n2", "n4", "n6"]
    assert s.search("smoke", line="101").complete


def test_candidates_bound_reads_newest_partitions_and_says_so(seven):
    res = TranscriptSearch(seven, max_candidates=3).search("smoke")
    assert sorted(ids(res)) == ["n5", "n6", "n7"]
    assert {h.ranked_within_recent for h in res} == {3}
    assert (res.complete, res.reason, res.searched_back_to) == (False, "candidates", 4000.0)
    assert {h.matches_estimate for h in res} == {7}  # 3 in 3 rows, scaled to all 7


def test_fuzzy_finds_a_misspelt_word_in_an_old_partition(db, small_parts):
    _call(db, "old", at=1000.0)
    _transcript(db, "old", [("caller", 0.0, 2.0, "the fire is at kingsbury road")])
    for i in range(5):
        _call(db, f"new{i}", at=2000.0 + i)
        _transcript(db, f"new{i}", [("caller", 0.0, 2.0, "nothing to see here")])
    [h] = TranscriptSearch(db).search("kingsbery")
    assert (h.call_id, h.match) == ("old", "fuzzy")


def test_retranscription_moves_the_call_to_the_newest_partition(seven):
    _transcript(seven, "n1", [("caller", 0.0, 2.0, "a quiet night")])
    s = TranscriptSearch(seven)
    assert "n1" not in ids(s.search("smoke"))
    assert ids(s.search("quiet")) == ["n1"]
    assert sum(p.rows for p in s.partitions()) == 7
    # the time of a call is its arrival: a time filter still finds it
    assert ids(s.search("quiet", since=500, until=1500)) == ["n1"]


def _old_database(path, n):
    """A database as it was before partitions: one FTS5 index filled by triggers."""
    d = Database(path)
    d.migrate(calls.COMPONENT, calls.MIGRATIONS)
    d.migrate(tstore.COMPONENT, tstore.MIGRATIONS[:6])
    with d.transaction() as conn:
        conn.execute("INSERT INTO transcription_index_state(name, version) VALUES ('call_index', ?)",
                     (tstore.INDEX_VERSION,))
        for i in range(n):
            calls.insert(conn, call_id=f"o{i}", line="999", caller="0", state="ended",
                         arrived_at=100.0 * (i + 1), handler_id="h1", incident_number=None)
            text, blob, display = tstore.encode_index(tstore.index_terms(
                [("caller", 0.0, 1.0, f"an old fire call {i}", 0.9, [])]))
            conn.execute("INSERT INTO transcription_call_index(call_id, terms, times, display)"
                         " VALUES (?,?,?,?)", (f"o{i}", text, blob, display))
    return d


def test_single_index_of_before_is_searchable_as_partition_zero(tmp_path, small_parts):
    d = _old_database(tmp_path / "old.sqlite3", 5)
    d.migrate(tstore.COMPONENT, tstore.MIGRATIONS)  # the schema only: not split yet
    s = TranscriptSearch(d)
    assert [(p.fts, p.rows) for p in s.partitions()] == [(tstore.LEGACY_FTS, 5)]
    assert len(s.search("fire")) == 5
    _call(d, "new", at=9000.0)
    _transcript(d, "new", [("caller", 0.0, 1.0, "a new fire call")])  # goes to a new partition
    assert [p.rows for p in s.partitions()] == [1, 5]
    res = s.search("fire")
    assert len(res) == 6 and res.complete
    d.close()


def test_migration_splits_the_single_index_into_partitions(tmp_path, small_parts):
    d = _old_database(tmp_path / "old.sqlite3", 5)
    tstore.migrate(d)
    s = TranscriptSearch(d)
    parts = s.partitions()
    assert [(p.rows, p.min_at, p.max_at) for p in parts] == [
        (1, 500.0, 500.0), (2, 300.0, 400.0), (2, 100.0, 200.0)]
    assert tstore.LEGACY_FTS not in {p.fts for p in parts}
    assert d.query("SELECT name FROM sqlite_master WHERE name = ?", (tstore.LEGACY_FTS,)) == []
    assert sorted(ids(s.search("fire"))) == [f"o{i}" for i in range(5)]
    [h] = s.search('"fire call 3"')
    assert h.call_id == "o3" and h.offset > 0
    assert ids(s.search("fire", since=150, until=350)) == ["o2", "o1"] or sorted(
        ids(s.search("fire", since=150, until=350))) == ["o1", "o2"]
    assert tstore.ensure_partitions(d) == 0  # once
    d.close()


def test_bad_continuation_is_a_clear_error(seven):
    from transcription.errors import SearchQueryError
    with pytest.raises(SearchQueryError, match="continuation"):
        TranscriptSearch(seven).search("smoke", before="x")


def test_cli_search_says_how_far_back_and_continues(tmp_path, small_parts, monkeypatch, capsys):
    """`controlroom search` (in process, the real store and search, one partition per
    search): it names the time it searched back to and the --continue number, and
    --continue finds the older call; each run is logged like any search."""
    import json
    import re

    from console.users import access_log
    from controlroom.cli import main
    from tests.cli.test_cli import config

    monkeypatch.setattr(tstore, "PARTITION_ROWS", 1)
    monkeypatch.setattr(TranscriptSearch.__init__, "__kwdefaults__",
                        {**TranscriptSearch.__init__.__kwdefaults__, "max_scan_rows": 1})
    cfg = str(config(tmp_path))
    assert main(["user", "add", "aud", "--role", "auditor", "--config", cfg,
                 "--password", "correct-horse-battery"]) == 0
    db = Database(tmp_path / "data" / "controlroom.sqlite3")
    db.migrate(calls.COMPONENT, calls.MIGRATIONS)
    tstore.migrate(db)
    for cid, at, text in (("c1", 1782898200.0, "a burglary at the old mill"),
                          ("c2", 1782898200.0 + 86400, "a burglary at the new school")):
        _call(db, cid, at=at)
        _transcript(db, cid, [("caller", 0.0, 2.0, text)])
    capsys.readouterr()
    search = ["search", "burglary", "--config", cfg, "--user", "aud", "--reason", "test of --continue", "--json"]
    assert main(search) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["call_id"] for line in out.splitlines()] == ["c2"]
    m = re.search(r"searched calls after (.+) only; narrow the time range \(--since/--until\) or"
                  r" continue further back with --continue (\d+)", err)
    assert m is not None, err
    assert main([*search, "--continue", m.group(2)]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["call_id"] for line in out.splitlines()] == ["c1"]
    assert "searched calls after" not in err
    assert [e["action"] for e in access_log(db)] == ["search", "search"]
    db.close()


def test_rows_after_the_newest_were_deleted_stay_in_the_partition_of_their_id(seven):
    """Deleting the newest calls' index rows (retention) lets SQLite reuse their ids: new
    rows then go to the partition whose range holds their id, so each row stays findable,
    replaceable and deletable."""
    with seven.transaction() as conn:
        for cid in ("n6", "n7"):
            tstore.index_call(conn, cid, [])  # as retention does
    for cid, at in (("m1", 8000.0), ("m2", 9000.0), ("m3", 9500.0)):
        _call(seven, cid, at=at)
        _transcript(seven, cid, [("caller", 0.0, 2.0, "a fresh fire")])
    s = TranscriptSearch(seven)
    assert sorted(ids(s.search("fresh"))) == ["m1", "m2", "m3"]
    for cid in ("m1", "m2", "m3"):  # each row's FTS entry is where its id says
        _transcript(seven, cid, [("caller", 0.0, 2.0, "a stale fire")])
    assert s.search("fresh") == [] and sorted(ids(s.search("stale"))) == ["m1", "m2", "m3"]
    assert sum(p.rows for p in s.partitions()) == 8
    assert sorted(ids(s.search("smoke"))) == [f"n{i}" for i in range(1, 6)]
