"""Configuration: the example loads; every bad value names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError, from_dict, load
from controlroom.cli import main

EXAMPLE = Path(__file__).parents[2] / "config" / "examples" / "controlroom.toml"


def minimal(**extra: object) -> dict:
    data: dict = {"lines": [{"name": "999", "numbers": ["999"], "priority": 0}]}
    data.update(extra)
    return data


def test_example_config_loads() -> None:
    """The shipped example is valid and means what it says."""
    s = load(EXAMPLE)
    assert [line.name for line in s.lines] == ["999", "101"]
    assert s.line("101").overflow == "busy"
    assert s.line("999").callback_on_abandon is True
    assert s.sip.codecs == ["PCMA", "PCMU"]
    assert s.mqtt.password == "env:CONTROLROOM_MQTT_PASSWORD"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "lines: at least one line is required"),
        (minimal(lines=[{"name": "999", "numbers": "999", "priority": 0}]),
         "lines[0].numbers: expected a list, got '999'"),
        (minimal(lines=[{"name": "999", "numbers": ["999"]}]), "lines[0].priority: is required"),
        (minimal(sip={"port": 70000}), "sip.port: must be 0..65535, got 70000"),
        (minimal(sip={"codecs": ["G729"]}), "sip.codecs[0]: must be 'PCMA' or 'PCMU', got 'G729'"),
        (minimal(sip={"prot": 1}), "sip.prot: unknown key (known keys here:"),
        (minimal(routing={"offer_timeout": "ten"}), "routing.offer_timeout: expected a number, got 'ten'"),
        (minimal(lines=[{"name": "999", "numbers": ["999"], "priority": 0},
                        {"name": "101", "numbers": ["999"], "priority": 1}]),
         "lines[1].numbers: number '999' is already on line '999'"),
        (minimal(handlers=[{"id": "h1", "phone": "h1@x"}]),
         "handlers[0].phone: must be a sip: or sips: URI, got 'h1@x'"),
        (minimal(lines=[{"name": "999", "numbers": ["999"], "priority": 0, "mode": "registered"}]),
         "lines[0].registrar: is required when mode = 'registered'"),
        (minimal(mqtt={"qos": 3}), "mqtt.qos: must be 0 or 1 or 2, got 3"),
        (minimal(lines=[{"name": "9/9", "numbers": ["999"], "priority": 0}]),
         "lines[0].name: must be non-empty without '/', '+', '#', got '9/9'"),
    ],
)
def test_bad_config_names_the_key(data: dict, message: str) -> None:
    """Each kind of mistake is reported with the dotted key and what is wrong."""
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    assert str(info.value).startswith(message)


def test_bad_toml_is_a_clear_error(tmp_path: Path) -> None:
    """A file that is not TOML names the file and the parse problem."""
    p = tmp_path / "bad.toml"
    p.write_text("[sip\nport=1")
    with pytest.raises(ConfigError, match=r"bad.toml is not valid TOML"):
        load(p)


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`controlroom check-config` names what the shipped example lacks on this machine
    (the broker's CA file and password of the production host), says OK once they are
    there, and exits 2 naming the key for a schema error."""
    assert main(["check-config", str(EXAMPLE)]) == 2
    err = capsys.readouterr().err
    assert "mqtt.password: environment variable CONTROLROOM_MQTT_PASSWORD is not set" in err
    assert "mqtt.ca_file: cannot read /etc/controlroom/cad-ca.pem" in err
    from harness.mosquitto import make_certs

    ca = make_certs(tmp_path)["ca"]
    text = EXAMPLE.read_text().replace("/etc/controlroom/cad-ca.pem", str(ca)).replace(
        "/var/lib/controlroom", str(tmp_path / "data")).replace('port = 5080', 'port = 0')
    ok = tmp_path / "ok.toml"
    ok.write_text(text.replace("\nport = 8080", "\nport = 0"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONTROLROOM_MQTT_PASSWORD", "s3cret-from-env")
        assert main(["check-config", str(ok)]) == 0
    assert "OK — 2 lines (999, 101)" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[[lines]]\nname = "999"\nnumbers = ["999"]\npriority = "high"\n')
    with pytest.raises(SystemExit) as info:
        main(["check-config", str(bad)])
    assert info.value.code == 2
    assert "lines[0].priority: expected an integer, got 'high'" in capsys.readouterr().err


def test_secret_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets come from the environment or a file; a missing one names the variable."""
    from config.loader import secret

    monkeypatch.setenv("CR_TEST_PW", "s3cret")
    assert secret("env:CR_TEST_PW", key="mqtt.password") == "s3cret"
    f = tmp_path / "pw"
    f.write_text("from-file\n")
    assert secret(f"file:{f}", key="mqtt.password") == "from-file"
    with pytest.raises(ConfigError, match="mqtt.password: environment variable NOPE_X is not set"):
        secret("env:NOPE_X", key="mqtt.password")

