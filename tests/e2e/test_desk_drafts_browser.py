"""Wrap-up drafts kept in the store (issue 17 item 1), in headless Chromium through the
real service on a real PostgreSQL store with real calls (SIPp through Kamailio).

The handler types a grading in wrap-up; the node is restarted (a new Service process
object on the same store); a fresh browser (no localStorage: as a page served by another
node of the cluster would be) finds the draft, opens it, and it holds what was typed; the
desk served by a second node on the same store finds it as well; the
next call's form starts empty and its typing goes to its own call; the first grading is
saved onto the first call only. Screenshots under tests/_artifacts/screenshots/."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path
from typing import Any

import pytest

from config import from_dict
from console import users
from controlroom.service import Service
from controlroom.stack import Stack, StackOptions
from harness.ports import free_tcp_port, free_udp_port
from store import drafts

from .conftest import wait_until
from .test_desk_workflow import PASSWORD, axe, browser, caller, login, poll, shot  # noqa: F401

pytestmark = [pytest.mark.realparts, pytest.mark.slow, pytest.mark.browser]

THREAT = "Neighbour heard shouting and glass breaking"


async def test_draft_survives_a_restart_and_stays_with_its_call(
        tmp_path: Path, browser: Any, pg_url: str) -> None:  # noqa: F811 - the fixture
    """Typed in wrap-up, kept in the store, restored after a restart in a browser with no
    local copy and on another node of the cluster (same store), never loaded onto or saved
    onto the next call."""
    opts = StackOptions(handlers=1, engine="none", handlers_available=False, ring_ms=300,
                        wrapup=300.0, storage={"url": pg_url})
    async with Stack(tmp_path, opts) as st:
        users.create_user(st.service.db, "h1", PASSWORD, ["handler"])
        base = f"http://127.0.0.1:{st.service.web_port}"
        desk = await login(browser, base, "h1", "/desk")
        await desk.click("#btn-available")
        await desk.wait_for_selector("#state.st-available")

        c1 = caller(st, "999", "07700900611", "c1", talk_s=2.0)
        await desk.wait_for_selector("#pop.wrapup", timeout=20000)   # answered, caller left
        first = await desk.get_attribute("#pop", "data-call-id")
        await desk.fill("#th-threat", THREAT)
        await desk.select_option("#grade", "2")
        await desk.fill("#notes", "Units asked to attend")
        await poll(desk, "() => /Draft kept/.test(document.getElementById('wrapup-status').textContent)")
        row = drafts.get(st.service.db, first)
        assert row is not None and row["handler_id"] == "h1"
        assert row["thrive"]["threat"] == THREAT and row["grade"] == "2", row
        await shot(desk, "desk-draft-typed")
        assert await asyncio.to_thread(c1.wait, 30) == 0, c1.diagnostics()

        # -- the node restarts: nothing of the draft is left in any process' memory --------
        await st.service.stop()
        st.service = Service(st.settings)
        await st.service.start()
        assert st.service.grading_drafts == {}
        await desk.context.close()

        # A browser with no local copy (another node's page would have none).
        desk = await login(browser, base, "h1", "/desk")
        assert await desk.evaluate("localStorage.length") == 0
        await desk.wait_for_selector(f".draft-open[data-call-id='{first}']")
        assert "07700900611" in await desk.text_content("#drafts")
        await desk.click(f".draft-open[data-call-id='{first}']")
        await desk.wait_for_selector(f"#wrapup[data-call-id='{first}']:not(.hidden)")
        assert await desk.input_value("#th-threat") == THREAT
        assert await desk.input_value("#grade") == "2"
        assert await desk.input_value("#notes") == "Units asked to attend"
        await shot(desk, "desk-draft-restored-after-restart")
        await axe(desk, "desk (draft restored)")

        # Another node of the cluster on the same store: its desk finds the draft too.
        data = tomllib.loads(st.config_path.read_text())
        data["mqtt"]["node"] = "fcr2"
        data["web"]["port"] = free_tcp_port()
        data["sip"]["port"] = free_udp_port()
        data["storage"]["data_dir"] = str(tmp_path / "data-fcr2")
        other = Service(from_dict(data))
        await other.start()
        try:
            page = await login(browser, f"http://127.0.0.1:{other.web_port}", "h1", "/desk")
            await page.wait_for_selector(f".draft-open[data-call-id='{first}']")
            await page.click(f".draft-open[data-call-id='{first}']")
            await page.wait_for_selector(f"#wrapup[data-call-id='{first}']:not(.hidden)")
            assert await page.input_value("#th-threat") == THREAT
            await shot(page, "desk-draft-on-another-node")
            await page.context.close()
        finally:
            await other.stop()

        # A reload with the local copy cleared: the store still has it.
        await desk.evaluate("localStorage.clear()")
        await desk.reload()
        await desk.wait_for_selector(f".draft-open[data-call-id='{first}']")

        # -- the next call: its form starts empty; its typing is its own -------------------
        await desk.click("#btn-available")
        await desk.wait_for_selector("#state.st-available")
        c2 = caller(st, "101", "07700900622", "c2", talk_s=30, hangup="remote")
        await desk.wait_for_selector("#pop.connected", timeout=20000)
        second = await desk.get_attribute("#pop", "data-call-id")
        assert second != first
        await desk.wait_for_selector(f"#wrapup[data-call-id='{second}']")
        assert await desk.input_value("#th-threat") == ""            # not the other draft
        assert await desk.input_value("#notes") == ""
        await desk.fill("#th-threat", "Lost property enquiry")
        await wait_until(lambda: (drafts.get(st.service.db, second) or {}).get("thrive", {})
                         .get("threat") == "Lost property enquiry", 10, "second draft")
        assert drafts.get(st.service.db, first)["thrive"]["threat"] == THREAT  # type: ignore[index]
        await shot(desk, "desk-draft-next-call-empty")
        await desk.keyboard.press("Alt+x")
        await desk.click("#end-ok")
        await desk.wait_for_selector("#pop.wrapup")
        await desk.select_option("#grade", "4")
        await desk.click("#save-grading")
        await wait_until(lambda: drafts.get(st.service.db, second) is None, 10, "saved")
        await desk.click("#ready")
        await desk.wait_for_selector("#state.st-available")

        # -- finish the first call's grading from its draft: saved onto that call only -----
        await desk.click(f".draft-open[data-call-id='{first}']")
        await desk.wait_for_selector(f"#wrapup[data-call-id='{first}']")
        assert await desk.input_value("#th-threat") == THREAT
        await desk.click("#save-grading")
        await wait_until(lambda: drafts.get(st.service.db, first) is None, 10, "draft dropped")
        rows = {r["call_id"]: r for r in st.service.db.query(
            "SELECT call_id, grade, thrive FROM calls WHERE call_id IN (?, ?)", (first, second))}
        assert rows[first]["grade"] == "2" and THREAT in rows[first]["thrive"]
        assert rows[second]["grade"] == "4" and THREAT not in (rows[second]["thrive"] or "")
        assert "Lost property enquiry" in rows[second]["thrive"]
        await shot(desk, "desk-draft-saved-onto-its-call")
        c2.stop()
