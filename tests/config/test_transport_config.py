"""check-config refuses what the engine cannot do (issue 12, defect 12): it speaks SIP over
UDP only, so sips: URIs and transports other than UDP are errors naming the key; so are
trusted sources that are no address, and a bad untrusted-source policy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config import ConfigError, from_dict
from controlroom.stack import toml_dump

LINE = {"name": "999", "numbers": ["999"], "priority": 0}


def with_(**extra: object) -> dict:
    data: dict = {"lines": [dict(LINE)]}
    data.update(extra)
    return data


@pytest.mark.parametrize(("data", "message"), [
    (with_(sip={"proxy": "sips:10.0.0.1:5061"}),
     "sip.proxy: sips: URIs need SIP over TLS, which this engine does not have (UDP only); "
     "got 'sips:10.0.0.1:5061'"),
    (with_(sip={"proxy": "sip:10.0.0.1:5060;lr;transport=tcp"}),
     "sip.proxy: transport=tcp is not supported: this engine speaks SIP over UDP only"),
    (with_(lines=[{**LINE, "mode": "registered", "registrar": "sip:pbx.example;transport=TLS"}]),
     "lines[0].registrar: transport=TLS is not supported"),
    (with_(lines=[{**LINE, "mode": "registered", "registrar": "sips:pbx.example"}]),
     "lines[0].registrar: sips: URIs need SIP over TLS"),
    (with_(handlers=[{"id": "h1", "phone": "sips:h1@fcr.example"}]),
     "handlers[0].phone: sips: URIs need SIP over TLS"),
    (with_(handlers=[{"id": "h1", "phone": "sip:h1@fcr.example;transport=ws"}]),
     "handlers[0].phone: transport=ws is not supported"),
    (with_(handlers=[{"id": "h1", "phone": "sip:h1@"}]),
     "handlers[0].phone: has no usable host, got 'sip:h1@'"),
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


def _check(tmp_path: Path, data: dict) -> subprocess.CompletedProcess[str]:
    p = tmp_path / "controlroom.toml"
    p.write_text(toml_dump(data))
    return subprocess.run([sys.executable, "-m", "controlroom.cli", "check-config", str(p)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.faults
def test_check_config_cli_refuses_sips_and_tls(tmp_path: Path) -> None:
    """`controlroom check-config` exits 2 naming the key for a sips: phone and a TLS proxy,
    and 0 for the same file with sip: URIs."""
    bad = _check(tmp_path, with_(handlers=[{"id": "h1", "phone": "sips:h1@fcr.example"}]))
    assert bad.returncode == 2, bad
    assert "configuration error: handlers[0].phone: sips: URIs need SIP over TLS" in bad.stderr
    tls = _check(tmp_path, with_(sip={"proxy": "sip:10.0.0.1;transport=tls"}))
    assert tls.returncode == 2 and "sip.proxy: transport=tls is not supported" in tls.stderr
    good = _check(tmp_path, with_(handlers=[{"id": "h1", "phone": "sip:h1@fcr.example"}],
                                  sip={"proxy": "sip:10.0.0.1:5060", "untrusted": "drop"}))
    assert good.returncode == 0, good.stderr
    assert "OK — 1 lines (999), 1 handlers" in good.stdout
