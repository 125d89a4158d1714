"""The console behind a TLS-terminating reverse proxy (issue 16 item 4): a real second
process (tests/console/revproxy.py: HTTPS in front, plain HTTP to the console on loopback,
X-Forwarded-For/-Proto as nginx sets them). With the proxy's address in
``web.trusted_proxies`` the console treats the request as HTTPS (HSTS, the Secure
``__Host-`` cookie) and logs the client's address from X-Forwarded-For; the same headers
sent straight to the console by anyone else are ignored; a host name in trusted_proxies
is a config error."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from config import ConfigError, WebSettings, from_dict
from harness.certs import CertAuthority

from .test_https import _login, _world

PROXY = Path(__file__).with_name("revproxy.py")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    ca = CertAuthority(tmp_path_factory.mktemp("proxy-ca"))
    server = ca.issue("proxy", "127.0.0.1")
    return ca.cert, server.cert, server.key


class Proxy:
    """revproxy.py in its own process, in front of ``upstream``."""

    def __init__(self, upstream: str, cert: Path, key: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(PROXY), "--upstream", upstream, "--cert", str(cert),
             "--key", str(key)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("READY "), f"proxy did not start: {line!r}"
        self.url = f"https://127.0.0.1:{int(line.split()[1])}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def behind_proxy(tmp_path: Path, certs) -> Iterator[tuple[str, str]]:
    """(the proxy's https URL, the console's own http URL), the console trusting
    127.0.0.1 as its proxy."""
    _, cert, key = certs
    server, fb, db = _world(tmp_path, WebSettings(trusted_proxies=["127.0.0.1/32"]), None)
    proxy = Proxy(server.url, cert, key)
    yield proxy.url, server.url
    proxy.stop()
    server.call(fb.close)
    server.stop()
    db.close()


async def test_through_a_trusted_proxy_the_console_is_https(behind_proxy, certs) -> None:
    """Through the proxy: HSTS and the __Host- Secure cookie on the login, the session
    works on the next request, and the login is logged with the address the proxy was
    given in X-Forwarded-For (the nearest one that is not a trusted proxy)."""
    import ssl

    proxy_url, _ = behind_proxy
    ca, _, _ = certs
    ctx = ssl.create_default_context(cafile=str(ca))
    with capture_logs() as logs:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            resp = await _login(s, proxy_url, ssl=ctx,
                                headers={"X-Forwarded-For": "203.0.113.9"})
            assert resp.headers["Strict-Transport-Security"] == "max-age=31536000"
            cookie = resp.headers["Set-Cookie"]
            assert cookie.startswith("__Host-cr_session=") and "Secure" in cookie
            me = await s.get(proxy_url + "/api/me", ssl=ctx)
            assert me.status == 200, await me.text()
    logins = [e for e in logs if e["event"] == "console.login"]
    assert [e["client"] for e in logins] == ["203.0.113.9"]


async def test_forwarded_headers_from_anyone_else_are_ignored(tmp_path: Path) -> None:
    """Straight to the console (its peer not in trusted_proxies): X-Forwarded-Proto:
    https gives no HSTS and no Secure cookie, and X-Forwarded-For does not change the
    logged client address."""
    server, fb, db = _world(tmp_path, WebSettings(trusted_proxies=["192.0.2.1"]), None)
    try:
        with capture_logs() as logs:
            async with aiohttp.ClientSession() as s:
                resp = await _login(s, server.url, headers={
                    "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"})
                assert "Strict-Transport-Security" not in resp.headers
                cookie = resp.headers["Set-Cookie"]
                assert cookie.startswith("cr_session=") and "Secure" not in cookie
        assert [e["client"] for e in logs if e["event"] == "console.login"] == ["127.0.0.1"]
    finally:
        server.call(fb.close)
        server.stop()
        db.close()


def test_trusted_proxies_must_be_addresses() -> None:
    """A host name (or anything not an IP address or network) is refused at load."""
    with pytest.raises(ConfigError, match=r"web.trusted_proxies\[1\]: must be an IP address "
                                          r"or network \(no host names\), got 'proxy.local'"):
        from_dict({"lines": [{"name": "999", "numbers": ["999"], "priority": 0}],
                   "web": {"trusted_proxies": ["10.0.0.0/8", "proxy.local"]}})
