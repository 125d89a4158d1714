"""Supervisor listen, whisper and barge from the wallboard's buttons in headless
Chromium (issue 17 item 5), through the real parts: Kamailio, a SIPp caller, the SIPp
handler phone and the supervisor's own SIPp phone, set on the admin page. What every
phone received is captured on the wire and the tones each heard are measured; each step
is in the access log (with the justification typed), the queue log and on the
wallboard. The call's recording (item 3) holds the supervisor on the caller-heard channel only
while barging, and the auditor's timeline marks where each mode began in it.
Screenshots under tests/_artifacts/screenshots/."""

from __future__ import annotations

import asyncio
import json
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from console import users
from controlroom.desk import ServiceDesk
from controlroom.stack import DOMAIN, Stack, StackOptions
from harness.sipp import RtpCapture

from .conftest import wait_until
from .monitor_setup import (
    CALLER_HZ,
    EXPECTED,
    HANDLER_HZ,
    SUPERVISOR_HZ,
    call_in,
    heard,
    hold,
    supervisor_phone,
    tone,
    tones_heard,
)
from .test_desk_workflow import PASSWORD, axe, browser, login, poll, shot  # noqa: F401

pytestmark = [pytest.mark.realparts, pytest.mark.slow, pytest.mark.browser]


async def test_wallboard_monitor_buttons_ring_the_supervisors_own_phone(
        tmp_path: Path, browser: Any) -> None:  # noqa: F811 - the fixture
    """The admin sets sup1's monitor phone; sup1 clicks Listen, Whisper, Barge, Stop on
    the wallboard: that phone rings and hears caller + handler; the handler hears the
    whisper and the caller does not; barge joins all three; each is logged."""
    opts = StackOptions(handlers=1, engine="none", ring_ms=200, handlers_available=True,
                        handler_pcm=tone(HANDLER_HZ, 60))
    async with Stack(tmp_path, opts) as st:
        db = st.service.db
        for name, roles in (("sup1", ["supervisor"]), ("adm1", ["admin"])):
            users.create_user(db, name, PASSWORD, roles)
        base = f"http://127.0.0.1:{st.service.web_port}"
        phone_uri = f"sip:supdesk4@{DOMAIN}"
        sup = await supervisor_phone(st, tmp_path, user="supdesk4", name="phone-sup", seconds=60)

        # -- the admin gives sup1 their own monitor phone (no handler entry has it) --------
        adm = await login(browser, base, "adm1", "/admin", size=(1440, 900))
        await adm.click("tr[data-user='sup1'] button.edit")
        await adm.fill("#ed-phone", "not a uri")
        await adm.click("#ed-phone-save")
        await poll(adm, "() => /SIP URI/.test(document.querySelector('.toast')?.textContent || '')", 5)
        await adm.fill("#ed-phone", phone_uri)
        await axe(adm, "admin (user dialog with the monitor phone)")
        await adm.click("#ed-phone-save")
        await adm.wait_for_selector("tr[data-user='sup1'] .phone")
        assert users.user_phone(db, "sup1") == phone_uri
        assert users.admin_log(db)[0]["action"] == "user.phone"
        await shot(adm, "admin-monitor-phone")

        # -- a real call: caller and handler each play their tone ------------------------
        caller, ports = call_in(st, sup, seconds=60, talk_s=45)
        wall = await login(browser, base, "sup1", "/wallboard", size=(1440, 900))
        await wall.wait_for_selector("tr[data-handler='h1'] button.monitor-listen", timeout=20000)
        call_id = next(c for c in st.service.calls.values() if c.state == "connected").call_id
        reasons = {"listen": "QA review of call handling",
                   "whisper": "Coaching: ask for the exact location",
                   "barge": "Taking over: caller in danger"}

        async def click(mode: str) -> None:
            wall.once("dialog", lambda d: asyncio.ensure_future(d.accept(reasons[mode])))
            await wall.click(f"tr[data-handler='h1'] button.monitor-{mode}")

        cap = await asyncio.to_thread(RtpCapture(list(ports.values()), workdir=tmp_path).start)
        marks: dict[str, tuple[float, float]] = {}
        try:
            for mode in ("listen", "whisper", "barge"):
                await click(mode)
                await wait_until(lambda m=mode: any(
                    x["mode"] == m and x["state"] == "on" for x in st.service.monitors.view()),
                    15, f"{mode} on")
                await poll(wall, f"() => /{mode} by sup1/.test(document.querySelector("
                                 "\"tr[data-handler='h1'] .monitor\")?.textContent || '')", 10)
                want = (f"Listen: your phone ({phone_uri}) rings" if mode == "listen"
                        else f"{mode.capitalize()}: on your phone now")
                await poll(wall, "(t) => [...document.querySelectorAll('.toast')]"
                                 ".some(e => e.textContent === t)", 5, want)
                if mode == "listen":
                    await shot(wall, "wallboard-monitor-listen")
                    await axe(wall, "wallboard (monitoring)")
                await hold(marks, mode)
            await shot(wall, "wallboard-monitor-barge")
            await wall.click("tr[data-handler='h1'] button.monitor-stop")
            await wait_until(lambda: not st.service.monitors.view(), 10, "monitor ended")
            await wall.wait_for_selector("tr[data-handler='h1'] button.monitor-stop",
                                         state="detached")
            await hold(marks, "after", 2.0)
        finally:
            await asyncio.to_thread(cap.stop)
        got = await tones_heard(cap, ports, marks)
        assert got == EXPECTED, got

        # -- logged: the access log with each reason, the queue log with the phone --------
        log = [(e["action"], e["call_id"], e["justification"], e["username"])
               for e in reversed(users.access_log(db))]
        assert log == [(m, call_id, reasons[m], "sup1") for m in ("listen", "whisper", "barge")]
        rows = db.query("SELECT event, handler_id, data FROM queue_log WHERE call_id=? "
                        "AND event LIKE 'MONITOR%' ORDER BY id", (call_id,))
        assert [(r["event"], r["handler_id"]) for r in rows] == [
            ("MONITOR_RING", "sup1"), ("MONITOR", "sup1"), ("MONITOR", "sup1"),
            ("MONITOR", "sup1"), ("MONITOR_END", "sup1")]
        assert all(phone_uri in r["data"] for r in rows)

        # -- the recording (issue 17 item 3): left what the caller said, right what the
        #    caller heard: the supervisor only while barging; the marks say where --------
        at = {json.loads(r["data"])["mode"] if r["event"] == "MONITOR" else r["event"]:
              json.loads(r["data"]).get("recording_at") for r in rows}
        assert all(isinstance(v, float) for k, v in at.items() if k != "MONITOR_RING"), at
        assert at["listen"] < at["whisper"] < at["barge"] < at["MONITOR_END"], at
        await ServiceDesk(st.service).end_call(call_id)
        await wait_until(lambda: (r := db.query_one(
            "SELECT recording_sha256 FROM calls WHERE call_id=?", (call_id,))) is not None
            and r["recording_sha256"], 20, "recording sealed")
        path = db.query_one("SELECT recording_path FROM calls WHERE call_id=?",
                            (call_id,))["recording_path"]
        with wave.open(path) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).reshape(-1, 2)

        def channels(a: float, b: float) -> dict[str, set[float]]:
            part = pcm[int(a * 8000):int(b * 8000)]
            return {"said": heard(part[:, 0].copy()), "heard": heard(part[:, 1].copy())}

        recorded = {"listen": channels(at["listen"] + 0.5, at["whisper"] - 0.2),
                    "whisper": channels(at["whisper"] + 0.5, at["barge"] - 0.2),
                    "barge": channels(at["barge"] + 0.5, at["MONITOR_END"] - 0.2),
                    "after": channels(at["MONITOR_END"] + 0.5, at["MONITOR_END"] + 2.0)}
        plain = {"said": {CALLER_HZ}, "heard": {HANDLER_HZ}}
        assert recorded == {"listen": plain, "whisper": plain, "after": plain,
                            "barge": {"said": {CALLER_HZ},
                                      "heard": {HANDLER_HZ, SUPERVISOR_HZ}}}, recorded

        # -- the auditor's timeline marks each mode with a play-from button ----------------
        users.create_user(db, "aud1", PASSWORD, ["auditor"])
        aud = await login(browser, base, "aud1", "/auditor", size=(1440, 900))
        await aud.goto(f"{base}/auditor#call={call_id}")
        await aud.reload()                       # the page reads the hash when it loads
        await aud.wait_for_selector("#just-dlg[open]")
        await aud.fill("#just-text", "Review of supervisor intervention")
        await aud.click("#just-ok")
        await aud.wait_for_selector("tr[data-event='MONITOR'] .rec-mark")
        notes = await aud.eval_on_selector_all("tr[data-event='MONITOR'] .rec-note",
                                               "es => es.map(e => e.textContent)")
        assert notes == ["listen: nobody heard the supervisor",
                         "whisper: heard by the handler only, not in the recording",
                         "barge: the supervisor is in the recording (the caller heard them)"]
        await axe(aud, "auditor (call with monitoring marks)")
        await shot(aud, "auditor-monitor-marks")
        await asyncio.to_thread(caller.stop)
