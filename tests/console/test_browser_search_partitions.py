"""The auditor page in real Chromium over the real partitioned transcript search: a
search that stops at its budget says how far back it looked, and "Continue further
back" (with its own justification and access-log row) finds the older call."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config import WebSettings
from console import audit, users
from console.app import create_app
from store import calls
from store.db import Database
from tests.console.fake import FakeBackend
from transcription import TranscriptSearch
from transcription import store as tstore
from transcription.search import SearchResult

from .liveserver import LiveServer
from .test_browser import PASSWORD, _confirm, browser, login, page, shot  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.realparts]


class BudgetSearch(FakeBackend):
    """The fake desk with the real search, reading one partition (one call) per search."""

    def __init__(self, db: Database, **kw: Any) -> None:
        super().__init__(**kw)
        self.db = db

    async def search(self, query: str, **filters: Any) -> list[dict[str, Any]]:
        before = filters.pop("before", None)
        hits = TranscriptSearch(self.db, max_scan_rows=1).search(
            query, before=before, **audit.search_kwargs(filters))
        return SearchResult([dict(vars(h)) for h in hits], **hits.coverage_fields())


@pytest.fixture
def world(tmp_path: Path, monkeypatch: Any) -> Iterator[tuple[LiveServer, Database]]:
    monkeypatch.setattr(tstore, "PARTITION_ROWS", 1)
    db = Database(tmp_path / "console.sqlite")
    db.migrate(calls.COMPONENT, calls.MIGRATIONS)
    tstore.migrate(db)
    users.create_user(db, "aud1", PASSWORD, ["auditor"])
    fb = BudgetSearch(db, handlers={"h1": "Sam Patel"}, recordings_dir=tmp_path / "rec")
    now = time.time()
    for at, text in ((now - 2 * 86400, "a man with a knife at the old bridge"),
                     (now - 3600, "a knife was found in the park")):
        cid = fb.add_past_call("999", "+447700900123", arrived_at=at, handler_id="h1",
                               transcript=[("caller", text)])
        with db.transaction() as conn:
            calls.insert(conn, call_id=cid, line="999", caller="+447700900123", state="completed",
                         arrived_at=at, handler_id="h1")
        tstore.save_transcript(db, cid, engine="whisper", model="tiny.en", language="en",
                               segments=[tstore.Segment("caller", 0.0, 3.0, text, 0.9)],
                               duration=5.0, recording_path=None)
    server = LiveServer(lambda: create_app(backend=fb, db=db, settings=WebSettings(),
                                           history_interval=300)).start()
    yield server, db
    server.call(fb.close)
    server.stop()
    db.close()


def test_search_says_how_far_back_and_continues(world: Any, page: Any) -> None:  # noqa: F811 (fixture)
    server, db = world
    login(page, server, "aud1", "/auditor", live=False)
    page.fill("#q", "knife")
    page.click("#search-btn")
    _confirm(page, "IOPC complaint 2026/119")
    page.wait_for_selector(".hit")
    assert page.locator(".hit").count() == 1
    assert "park" in page.text_content(".hit .snip")
    note = page.text_content("#hits-note")
    assert "Searched back to calls after" in note and "narrow the time range or continue" in note
    shot(page, "auditor-searched-back-to")
    page.click("#search-continue")
    _confirm(page)  # a continuation is a search: its own justification and log row
    page.wait_for_selector(".hit .snip:has-text('bridge')")
    assert page.locator(".hit").count() == 1
    assert page.text_content("#hits-note") == ""  # reached the beginning
    assert [(e["action"], e["query"]) for e in users.access_log(db)] == [
        ("search", "knife"), ("search", "knife")]
