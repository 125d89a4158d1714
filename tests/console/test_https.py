"""The console over HTTPS (issue 16 item 4): TLS in the aiohttp server from [web]
certificate/key, HSTS, the session cookie Secure (``__Host-``) only on HTTPS, the live
WebSocket over TLS; in headless Chromium that trusts only the test's throw-away key."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from config import ConfigError, WebSettings, from_dict
from console import users
from console.app import create_app
from controlroom.web import tls_context
from harness.certs import CertAuthority
from store.db import Database
from tests.console.fake import FakeBackend

from .liveserver import LiveServer

PASSWORD = "correct horse battery"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(CA, server certificate, key) for 127.0.0.1, made for this module only."""
    ca = CertAuthority(tmp_path_factory.mktemp("console-ca"))
    server = ca.issue("console", "127.0.0.1")
    return ca.cert, server.cert, server.key


def _world(tmp_path: Path, settings: WebSettings,
           ssl_ctx: ssl.SSLContext | None) -> tuple[LiveServer, FakeBackend, Database]:
    db = Database(tmp_path / "console.sqlite")
    users.create_user(db, "h1", PASSWORD, ["handler"])
    fb = FakeBackend(handlers={"h1": "Sam Patel"}, recordings_dir=tmp_path / "rec")
    server = LiveServer(lambda: create_app(backend=fb, db=db, settings=settings,
                                           history_interval=300), ssl_ctx).start()
    return server, fb, db


@pytest.fixture
def https(tmp_path: Path, certs: tuple[Path, Path, Path]) -> Iterator[tuple[LiveServer, FakeBackend]]:
    _, cert, key = certs
    settings = WebSettings(certificate=str(cert), key=str(key))
    server, fb, db = _world(tmp_path, settings, tls_context(settings))
    yield server, fb
    server.call(fb.close)
    server.stop()
    db.close()


async def _login(session: aiohttp.ClientSession, url: str, **kw: Any) -> aiohttp.ClientResponse:
    resp = await session.post(url + "/api/login", json={"username": "h1", "password": PASSWORD},
                              **kw)
    assert resp.status == 200, await resp.text()
    return resp


async def test_https_sets_hsts_secure_cookie_and_serves_wss(https, certs) -> None:
    """Over HTTPS: HSTS on every response, the session cookie is __Host-, Secure, HttpOnly,
    SameSite=Strict; the live WebSocket works over TLS; plain HTTP to the port gets nothing."""
    server, _ = https
    ca, _, _ = certs
    client_ctx = ssl.create_default_context(cafile=str(ca))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        resp = await _login(s, server.url, ssl=client_ctx)
        assert resp.headers["Strict-Transport-Security"] == "max-age=31536000"
        cookie = resp.headers["Set-Cookie"]
        assert cookie.startswith("__Host-cr_session=")
        for flag in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
            assert flag in cookie
        page = await s.get(server.url + "/login", ssl=client_ctx)
        assert page.headers["Strict-Transport-Security"] == "max-age=31536000"
        async with s.ws_connect(server.url.replace("https", "wss") + "/api/ws", ssl=client_ctx,
                                headers={"Origin": server.url}) as ws:
            first = await asyncio.wait_for(ws.receive_json(), 5)
            assert first["type"]  # the snapshot arrives over wss
    with pytest.raises(aiohttp.ClientError):
        async with aiohttp.ClientSession() as s:
            await s.get(server.url.replace("https", "http") + "/login",
                        timeout=aiohttp.ClientTimeout(total=3))
    with pytest.raises(aiohttp.ClientConnectorCertificateError):  # our CA only
        async with aiohttp.ClientSession() as s:
            await s.get(server.url + "/login", timeout=aiohttp.ClientTimeout(total=3))


@pytest.mark.parametrize(("secure_cookies", "name", "secure", "hsts"), [
    (False, "cr_session", False, None),
    (True, "__Host-cr_session", True, "max-age=31536000"),  # TLS proxy in front
])
async def test_plain_http_cookie_and_hsts(tmp_path: Path, secure_cookies: bool, name: str,
                                          secure: bool, hsts: str | None) -> None:
    """Plain HTTP (the loopback demo): no Secure flag, no HSTS; behind a TLS proxy
    (web.secure_cookies) both, as the browser sees HTTPS."""
    server, fb, db = _world(tmp_path, WebSettings(secure_cookies=secure_cookies), None)
    try:
        async with aiohttp.ClientSession() as s:
            resp = await _login(s, server.url)
            assert resp.headers.get("Strict-Transport-Security") == hsts
            cookie = resp.headers["Set-Cookie"]
            assert cookie.startswith(name + "=") and ("Secure" in cookie) == secure
    finally:
        server.call(fb.close)
        server.stop()
        db.close()


def test_certificate_problems_are_start_up_errors(tmp_path: Path, certs) -> None:
    """Half a pair is a config error; an unreadable file or a key of another certificate
    is a start-up error naming web.certificate."""
    ca, cert, key = certs
    with pytest.raises(ConfigError, match=r"web.key: certificate and key go together"):
        from_dict({"lines": [{"name": "999", "numbers": ["999"], "priority": 0}],
                   "web": {"certificate": str(cert)}})
    with pytest.raises(ConfigError, match=r"web.certificate: cannot load .*missing.pem"):
        tls_context(WebSettings(certificate=str(tmp_path / "missing.pem"), key=str(key)))
    other = CertAuthority(tmp_path / "other").issue("x", "127.0.0.1")
    with pytest.raises(ConfigError, match="web.certificate: cannot load"):
        tls_context(WebSettings(certificate=str(cert), key=str(other.key)))


def _spki_pin(cert: Path) -> str:
    """base64 SHA-256 of the certificate's public key: Chromium trusts exactly that key."""
    der = subprocess.run(["openssl", "x509", "-in", str(cert), "-pubkey", "-noout"],
                         capture_output=True, check=True).stdout
    spki = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=der,
                          capture_output=True, check=True).stdout
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.mark.realparts
@pytest.mark.browser
def test_chromium_desk_over_https_and_wss(https, certs) -> None:
    """Chromium logs in over HTTPS, gets the Secure cookie, its desk WebSocket (wss) is live
    and pops an offered 999 call; the page's protocol is https and HSTS is sent."""
    if not Path(CHROMIUM).exists():
        pytest.skip("no /usr/bin/chromium")
    from playwright.sync_api import sync_playwright
    server, fb = https
    _, cert, _ = certs
    args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            f"--ignore-certificate-errors-spki-list={_spki_pin(cert)}"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            ctx = browser.new_context(viewport={"width": 1280, "height": 800})
            page = ctx.new_page()
            page.set_default_timeout(8000)
            first = page.goto(server.url + "/")
            assert first is not None
            page.wait_for_url("**/login")
            page.fill("#username", "h1")
            page.fill("#password", PASSWORD)
            page.click("#signin")
            page.wait_for_url("**/desk")
            page.wait_for_selector("#conn:not(.down)")  # the live WebSocket is up (wss)
            assert page.evaluate("location.protocol") == "https:"
            cookies = {c["name"]: c for c in ctx.cookies()}
            c = cookies["__Host-cr_session"]
            assert c["secure"] and c["httpOnly"] and c["sameSite"] == "Strict"
            resp = page.goto(server.url + "/desk")
            assert resp is not None and resp.headers["strict-transport-security"] == "max-age=31536000"
            page.wait_for_selector("#conn:not(.down)")
            page.click("#btn-available")
            page.wait_for_selector("#state.st-available")
            t0 = time.monotonic()
            cid = server.call(lambda: fb.arrive("999", "+447700900777"))
            server.call(fb.offer, cid, "h1")
            page.wait_for_selector(f"#pop[data-call-id='{cid}']")
            assert page.text_content("#pop-caller") == "+447700900777"
            print(f"\nscreen-pop over wss: {1000 * (time.monotonic() - t0):.0f} ms")
        finally:
            browser.close()
