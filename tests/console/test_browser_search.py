"""The auditor page in real Chromium over the real transcript search (SQLite call index,
normalisation, fuzzy expansion): rank, score, matched words with their times, low
confidence, play from a word, a misspelt place name, a malformed query."""

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

from .liveserver import LiveServer
from .test_browser import PASSWORD, _confirm, browser, login, page, shot, wait_js  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.realparts]

PAST = [("handler", "Police emergency, what is happening?"),
        ("caller", "A man is waving a knife outside the shop on Elm Road"),
        ("handler", "Is anyone hurt?"),
        ("caller", "No, but people are running away")]


class RealSearch(FakeBackend):
    """The fake desk, but transcript search is the real one over a real database."""

    def __init__(self, db: Database, **kw: Any) -> None:
        super().__init__(**kw)
        self.db = db

    async def search(self, query: str, **filters: Any) -> list[dict[str, Any]]:
        hits = await TranscriptSearch(self.db).asearch(query, **audit.search_kwargs(filters))
        return [dict(vars(h)) for h in hits]


def _words(text: str, start: float, end: float, low: str = "") -> list[list[Any]]:
    ws = text.split()
    step = (end - start) / len(ws)
    return [[w, round(start + i * step, 3), round(start + (i + 1) * step, 3), 0.3 if w == low else 0.9]
            for i, w in enumerate(ws)]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[LiveServer, RealSearch, Database, str]]:
    db = Database(tmp_path / "console.sqlite")
    db.migrate(calls.COMPONENT, calls.MIGRATIONS)
    tstore.migrate(db)
    users.create_user(db, "aud1", PASSWORD, ["auditor"])
    fb = RealSearch(db, handlers={"h1": "Sam Patel", "h2": "Priya Shah"},
                    recordings_dir=tmp_path / "rec")
    now = time.time()
    cid = fb.add_past_call("999", "+447700900123", arrived_at=now - 86400, handler_id="h2",
                           transcript=PAST, incident="WMP-20261122-0311", grade="1")
    other = fb.add_past_call("101", "+447700900456", arrived_at=now - 7200, handler_id="h1",
                             transcript=[("caller", "my car was stolen in Wolverhampton last night")])
    for call_id, line, caller, at, transcript in (
            (cid, "999", "+447700900123", now - 86400, PAST),
            (other, "101", "+447700900456", now - 7200,
             [("caller", "my car was stolen in Wolverhampton last night")])):
        with db.transaction() as conn:
            calls.insert(conn, call_id=call_id, line=line, caller=caller, state="completed",
                         arrived_at=at, handler_id="h2" if line == "999" else "h1")
        segs = [tstore.Segment(ch, i * 3.0, i * 3.0 + 2.5, text, 0.9,
                               _words(text, i * 3.0, i * 3.0 + 2.5, low="hurt?"))
                for i, (ch, text) in enumerate(transcript)]
        tstore.save_transcript(db, call_id, engine="whisper", model="tiny.en", language="en",
                               segments=segs, duration=12.0, recording_path=None)
    server = LiveServer(lambda: create_app(backend=fb, db=db, settings=WebSettings(),
                                           history_interval=300)).start()
    yield server, fb, db, cid
    server.call(fb.close)
    server.stop()
    db.close()


def test_auditor_sees_ranked_hits_word_times_and_plays_from_a_word(world: Any, page: Any) -> None:  # noqa: F811 (fixture)
    """Two words from two segments (caller's "knife", handler's "hurt") find the call:
    rank and score shown, the snippet marks the first word, each matched word is listed
    with its time (the uncertain one dashed); clicking a word plays from that word."""
    server, _, db, cid = world
    login(page, server, "aud1", "/auditor", live=False)
    page.fill("#q", "knife hurt")
    page.click("#search-btn")
    _confirm(page, "IOPC complaint 2026/117")
    page.wait_for_selector(".hit")
    assert page.locator(".hit").count() == 1
    assert page.text_content(".hit .rank") == "#1"
    assert page.text_content(".hit .score").startswith("score ")
    assert page.get_attribute(".hit", "data-match") == "exact"
    assert page.text_content(".hit .snip mark") == "knife"
    assert "caller @ 0:04" in page.text_content(".hit .meta")  # the first matched word
    chips = page.locator(".hit .word")
    assert chips.all_text_contents() == ["knife @ 0:04 caller", "hurt? @ 0:07 handler"]
    assert chips.nth(1).get_attribute("class") == "word lowconf"
    chips.nth(1).click()
    _confirm(page)  # pre-filled with the last justification
    page.wait_for_selector(f"#call[data-call-id='{cid}']")
    page.click("#play-btn")
    _confirm(page)
    wait_js(page, "() => { const a = document.getElementById('audio'); return a.duration > 0 && a.currentTime >= 7.6; }")
    page.evaluate("() => document.getElementById('audio').pause()")
    shot(page, "auditor-word-times")
    assert [(e["action"], e["query"]) for e in reversed(users.access_log(db))] == [
        ("search", "knife hurt"), ("view", None), ("playback", None)]


def test_auditor_misspelt_place_and_malformed_query(world: Any, page: Any) -> None:  # noqa: F811 (fixture)
    """A misspelt place name finds the call, marked as a fuzzy match; a malformed query
    shows what is wrong and logs nothing."""
    server, _, db, _ = world
    login(page, server, "aud1", "/auditor", live=False)
    page.fill("#q", "Wolverhamton")
    page.click("#search-btn")
    _confirm(page, "IOPC complaint 2026/118")
    page.wait_for_selector(".hit")
    assert page.get_attribute(".hit", "data-match") == "fuzzy"
    assert page.text_content(".hit .matchkind") == "fuzzy match"
    assert page.text_content(".hit .snip mark") == "Wolverhampton"
    page.fill("#q", "(knife OR gun")
    page.click("#search-btn")
    _confirm(page)
    page.wait_for_selector(".toast.error")
    assert page.text_content(".toast") == ("query '(knife OR gun' cannot be searched: "
                                           "unbalanced parentheses: '(' without ')'")
    assert [e["query"] for e in users.access_log(db)] == ["Wolverhamton"]
