"""check-config refuses what the engine cannot do (issue 12 defect 12, issue 16): SIP goes
over UDP, and over TCP and TLS only when configured, so a sips: URI without sip.tls, a
;transport=tcp without sip.tcp and other transports (ws, sctp) are errors naming the key;
so are TLS without certificate files, trusted sources that are no address, and a bad
untrusted-source policy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config import ConfigError, from_dict
from controlroom.stack import toml_dump

LINE = {"name": "999", "numbers": ["999"], "priority": 0}
NO_TLS = "needs SIP over TLS, which is not configured (set sip.tls = true with sip.tls_cert "


def with_(**extra: object) -> dict:
    data: dict = {"lines": [dict(LINE)]}
    data.update(extra)
    return data


@pytest.mark.parametrize(("data", "message"), [
    (with_(sip={"proxy": "sips:10.0.0.1:5061"}), "sip.proxy: " + NO_TLS),
    (with_(sip={"proxy": "sip:10.0.0.1:5060;lr;transport=tcp"}),
     "sip.proxy: needs SIP over TCP, which is not configured (set sip.tcp = true); "
     "got 'sip:10.0.0.1:5060;lr;transport=tcp'"),
    (with_(lines=[{**LINE, "mode": "registered", "registrar": "sip:pbx.example;transport=TLS"}]),
     "lines[0].registrar: " + NO_TLS),
    (with_(lines=[{**LINE, "mode": "registered", "registrar": "sips:pbx.example"}]),
     "lines[0].registrar: " + NO_TLS),
    (with_(handlers=[{"id": "h1", "phone": "sips:h1@fcr.example"}]), "handlers[0].phone: " + NO_TLS),
    (with_(handlers=[{"id": "h1", "phone": "sip:h1@fcr.example;transport=ws"}]),
     "handlers[0].phone: transport=ws is not supported: this engine speaks SIP over UDP, TCP "
     "and TLS only"),
    (with_(handlers=[{"id": "h1", "phone": "sips:h1@fcr.example;transport=tcp"}]),
     "handlers[0].phone: a sips: URI must be reached over TLS"),
    (with_(handlers=[{"id": "h1", "phone": "sip:h1@"}]),
     "handlers[0].phone: has no usable host, got 'sip:h1@'"),
    (with_(sip={"tls": True}), "sip.tls_cert: is required when tls = true"),
    (with_(sip={"tls": True, "tls_cert": "/nonexistent/c.pem", "tls_key": "/nonexistent/k.pem"}),
     "sip.tls_cert: no such file: '/nonexistent/c.pem'"),
    (with_(sip={"tcp_message_timeout": 0}), "sip.tcp_message_timeout: must be positive"),
    (with_(lines=[{**LINE, "tls_client_cert": True}]),
     "lines[0].tls_client_cert: needs sip.tls = true"),
    (with_(lines=[{**LINE, "trusted_sources": ["10.0.0.1", "sbc.example"]}]),
     "lines[0].trusted_sources[1]: must be an IP address or CIDR block (e.g. 10.20.0.0/24), "
     "got 'sbc.example'"),
    (with_(sip={"untrusted": "ignore"}), "sip.untrusted: must be 'reject' or 'drop', got 'ignore'"),
    (with_(sip={"untrusted_rate": 0}), "sip.untrusted_rate: untrusted_rate must be > 0"),
])
def test_what_the_engine_cannot_do_is_refused_naming_the_key(data: dict, message: str) -> None:
    """Each setting the engine could not honour is a ConfigError naming its key."""
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    assert str(info.value).startswith(message), str(info.value)


def test_udp_uris_and_policies_are_accepted() -> None:
    """Plain sip: URIs (transport=udp spelled out or not) and both policies load."""
    s = from_dict(with_(sip={"proxy": "sip:10.0.0.1:5060;lr;transport=UDP", "untrusted": "drop"},
                        handlers=[{"id": "h1", "phone": "sip:h1@fcr.example;transport=udp"}],
                        lines=[{**LINE, "trusted_sources": ["10.0.0.0/24", "::1"]}]))
    assert s.sip.untrusted == "drop" and s.handlers[0].phone.endswith("transport=udp")
    assert from_dict(with_()).sip.untrusted == "reject"


def _tls(tmp_path: Path) -> dict:
    # real PEM files: check-config loads the certificate with its key and the CA bundle
    from harness.mosquitto import make_certs

    if not (tmp_path / "server.crt").exists():
        make_certs(tmp_path)
    return {"tls": True, "tcp": True, "tls_cert": str(tmp_path / "server.crt"),
            "tls_key": str(tmp_path / "server.key"), "tls_ca": str(tmp_path / "ca.crt")}


def test_tls_and_tcp_uris_are_accepted_when_configured(tmp_path: Path) -> None:
    """With sip.tls and sip.tcp set, sips:, ;transport=tls and ;transport=tcp URIs load,
    and a line may ask for mutual TLS."""
    s = from_dict(with_(sip={**_tls(tmp_path), "proxy": "sips:kamailio.fcr.example:5061"},
                        handlers=[{"id": "h1", "phone": "sip:h1@fcr.example;transport=tcp"},
                                  {"id": "h2", "phone": "sip:h2@fcr.example;transport=tls"}],
                        lines=[{**LINE, "tls_client_cert": True}]))
    assert s.sip.transports == {"udp", "tcp", "tls"} and s.lines[0].tls_client_cert


def _check(tmp_path: Path, data: dict) -> subprocess.CompletedProcess[str]:
    p = tmp_path / "controlroom.toml"
    p.write_text(toml_dump(data))
    return subprocess.run([sys.executable, "-m", "controlroom.cli", "check-config", str(p)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.faults
def test_check_config_cli_refuses_sips_without_tls(tmp_path: Path) -> None:
    """`controlroom check-config` exits 2 naming the key for a sips: phone and a TLS proxy
    when TLS is not configured, 0 once it is, and 0 for the same file with sip: URIs."""
    bad = _check(tmp_path, with_(handlers=[{"id": "h1", "phone": "sips:h1@fcr.example"}]))
    assert bad.returncode == 2, bad
    assert "configuration error: handlers[0].phone: " + NO_TLS in bad.stderr
    tls = _check(tmp_path, with_(sip={"proxy": "sip:10.0.0.1;transport=tls"}))
    assert tls.returncode == 2 and "sip.proxy: " + NO_TLS in tls.stderr
    ok = _check(tmp_path, with_(sip={**_tls(tmp_path), "proxy": "sip:10.0.0.1;transport=tls"},
                                handlers=[{"id": "h1", "phone": "sips:h1@fcr.example"}]))
    assert ok.returncode == 0, ok.stderr
    good = _check(tmp_path, with_(handlers=[{"id": "h1", "phone": "sip:h1@fcr.example"}],
                                  sip={"proxy": "sip:10.0.0.1:5060", "untrusted": "drop"}))
    assert good.returncode == 0, good.stderr
    assert "OK — 1 lines (999), 1 handlers" in good.stdout
