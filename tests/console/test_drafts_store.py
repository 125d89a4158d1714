"""Wrap-up drafts kept in the store (issue 17 item 1), on SQLite and a real PostgreSQL:
one row per call, restored by a fresh connection (a restarted node or another node),
never written onto another call, gone once the grading is saved."""

from __future__ import annotations

from store import drafts
from store.db import Database


def test_drafts_survive_a_new_connection_and_stay_with_their_call(store_url: str) -> None:
    """A draft saved, then read by a new Database (a restart or another node), is the
    last one typed for that call only; the other call's draft is untouched; delete
    drops only its own call's draft."""
    db = Database(store_url)
    drafts.migrate(db)
    drafts.save(db, "call-a", "h1", {"thrive": {"threat": "knife"}, "grade": "", "x": 1}, 10.0)
    drafts.save(db, "call-b", "h1", {"notes": "second call"}, 11.0)
    drafts.save(db, "call-a", "h1", {"thrive": {"threat": "knife seen"}, "grade": "2"}, 12.0)
    db.close()

    db2 = Database(store_url)
    drafts.migrate(db2)   # nothing left to apply
    a = drafts.get(db2, "call-a")
    assert a == {"call_id": "call-a", "handler_id": "h1", "at": 12.0,
                 "thrive": {"threat": "knife seen"}, "grade": "2"}
    assert drafts.get(db2, "call-b")["notes"] == "second call"   # type: ignore[index]
    assert [d["call_id"] for d in drafts.of_handler(db2, "h1")] == ["call-b", "call-a"]
    assert drafts.of_handler(db2, "h2") == []
    drafts.delete(db2, "call-a")
    assert drafts.get(db2, "call-a") is None
    assert drafts.get(db2, "call-b") is not None
    db2.close()


async def test_desk_drafts_are_kept_per_handler(tmp_path) -> None:
    """ServiceDesk's drafts go to the store with the handler who typed them: h1's draft
    is listed among h1's unsaved gradings and never among h2's."""
    from types import SimpleNamespace

    from controlroom.desk import ServiceDesk

    db = Database(str(tmp_path / "s.sqlite3"))
    svc = SimpleNamespace(db=db, grading_drafts={})
    desk = ServiceDesk(svc)  # type: ignore[arg-type]
    await desk.save_draft("c1", "h1", {"notes": "h1 typed this"})
    assert desk._draft("c1")["notes"] == "h1 typed this"   # type: ignore[index]
    assert [d["call_id"] for d in desk._handler_drafts("h1")] == ["c1"]
    assert desk._handler_drafts("h2") == []
    db.close()
