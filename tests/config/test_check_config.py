"""check-config is the truth (issue 18 item 2): what `serve` would fail on at start is
reported by `check-config`, naming the key; `serve` with the same configuration exits
non-zero with one clear line per problem and no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from controlroom.stack import toml_dump
from harness.ports import free_tcp_port, free_udp_port

CLI = [sys.executable, "-m", "controlroom.cli"]


def base(tmp_path: Path) -> dict:
    return {
        "sip": {"port": free_udp_port(), "rtp_port_min": 40200, "rtp_port_max": 40299},
        "lines": [{"name": "999", "numbers": ["999"], "priority": 0}],
        "handlers": [{"id": "h1", "phone": "sip:h1@controlroom.local", "skills": ["999"]}],
        "storage": {"data_dir": str(tmp_path / "data")},
        "mqtt": {"port": free_tcp_port()},
        "transcription": {"engine": "none"},
        "web": {"port": free_tcp_port()},
    }


def both(tmp_path: Path, data: dict, *extra: str) -> tuple[subprocess.CompletedProcess[str],
                                                            subprocess.CompletedProcess[str]]:
    """check-config and serve on the same file."""
    p = tmp_path / "controlroom.toml"
    p.write_text(toml_dump(data))
    env = {k: v for k, v in os.environ.items() if k != "CR_UNSET_PASSWORD"}
    check = subprocess.run([*CLI, "check-config", str(p), *extra], capture_output=True,
                           text=True, timeout=120, env=env)
    serve = subprocess.run([*CLI, "serve", "--config", str(p)], capture_output=True,
                           text=True, timeout=120, env=env)
    return check, serve


def assert_refused(check: subprocess.CompletedProcess[str],
                   serve: subprocess.CompletedProcess[str], line: str) -> None:
    assert check.returncode == 2, check.stdout + check.stderr
    assert f"configuration error: {line}" in check.stderr
    assert serve.returncode == 2, serve.stdout + serve.stderr
    assert f"configuration error: {line}" in serve.stderr
    assert "Traceback" not in serve.stderr and "Traceback" not in serve.stdout
    assert len(serve.stderr.strip().splitlines()) == 1, serve.stderr


def test_a_good_configuration_is_ok(tmp_path: Path) -> None:
    """The baseline used below passes."""
    p = tmp_path / "ok.toml"
    p.write_text(toml_dump(base(tmp_path)))
    r = subprocess.run([*CLI, "check-config", str(p)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


def test_unset_environment_password(tmp_path: Path) -> None:
    """An env: secret whose variable is not set names the key and the variable."""
    data = base(tmp_path)
    data["mqtt"]["password"] = "env:CR_UNSET_PASSWORD"
    assert_refused(*both(tmp_path, data),
                   "mqtt.password: environment variable CR_UNSET_PASSWORD is not set")


def test_missing_vosk_model_folder(tmp_path: Path) -> None:
    """A Vosk model folder that does not exist names transcription.model."""
    data = base(tmp_path)
    data["transcription"] = {"engine": "vosk", "model": str(tmp_path / "no-such-model")}
    assert_refused(*both(tmp_path, data), "transcription.model: Vosk model folder "
                   f"{tmp_path / 'no-such-model'} does not exist")


def test_unreadable_certificate(tmp_path: Path) -> None:
    """A TLS certificate that is not there names sip.tls_cert; a key of another
    certificate names it too."""
    from harness.mosquitto import make_certs

    data = base(tmp_path)
    data["sip"].update({"tls": True, "tls_port": 0, "tls_cert": str(tmp_path / "nope.pem"),
                        "tls_key": str(tmp_path / "nope.key")})
    check, serve = both(tmp_path, data)
    assert_refused(check, serve, "sip.tls_cert: ")
    assert str(tmp_path / "nope.pem") in serve.stderr
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    ca, cb = make_certs(a), make_certs(b)
    data["sip"].update({"tls_cert": str(ca["cert"]), "tls_key": str(cb["key"])})
    check, serve = both(tmp_path, data)
    assert check.returncode == 2 and "sip.tls_cert: certificate and key do not load" in check.stderr
    assert serve.returncode == 2 and "Traceback" not in serve.stderr


def test_busy_ports(tmp_path: Path) -> None:
    """A SIP port or console port another process holds names sip.port / web.port."""
    data = base(tmp_path)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", data["sip"]["port"]))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", data["web"]["port"]))
    tcp.listen()
    try:
        check, serve = both(tmp_path, data)
    finally:
        udp.close()
        tcp.close()
    for r in (check, serve):
        assert r.returncode == 2
        assert f"sip.port: 127.0.0.1:{data['sip']['port']} is already in use" in r.stderr
        assert f"web.port: 127.0.0.1:{data['web']['port']} is already in use" in r.stderr
        assert "Traceback" not in r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the check as another user")
def test_privileged_port_as_an_unprivileged_user(tmp_path: Path) -> None:
    """Port 80 for the console, checked as 'nobody', names web.port as privileged."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="check-config-"))  # readable by nobody
    os.chmod(d, 0o777)
    data = base(d)
    data["web"]["port"] = 80
    p = d / "c.toml"
    p.write_text(toml_dump(data))
    os.chmod(p, 0o644)
    request_cleanup = shutil.rmtree
    probe = subprocess.run(["runuser", "-u", "nobody", "--", sys.executable, "-c",
                            f"open({str(p)!r}).read()"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("nobody cannot read the test folder here")
    start = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text().strip()
    if int(start) <= 80:
        pytest.skip("this kernel lets anyone bind port 80")
    r = subprocess.run(["runuser", "-u", "nobody", "--", *CLI, "check-config", str(p)],
                       capture_output=True, text=True, timeout=60,
                       cwd=str(Path(__file__).resolve().parents[2]))
    request_cleanup(d, ignore_errors=True)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "web.port: port 80 is privileged" in r.stderr


def test_unwritable_data_path(tmp_path: Path) -> None:
    """A data_dir below a regular file names storage.data_dir."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    data = base(tmp_path)
    data["storage"]["data_dir"] = str(blocker / "data")
    assert_refused(*both(tmp_path, data), f"storage.data_dir: {blocker} is a file, not a folder")


def test_public_host_must_be_an_address(tmp_path: Path) -> None:
    """A container or host name as public_host (it goes into SDP) names sip.public_host;
    bind 0.0.0.0 without one too."""
    data = base(tmp_path)
    data["sip"].update({"bind": "0.0.0.0", "public_host": "controlroom"})
    assert_refused(*both(tmp_path, data), "sip.public_host: 'controlroom' is not an IP address")
    del data["sip"]["public_host"]
    assert_refused(*both(tmp_path, data), "sip.public_host: must be set when sip.bind is 0.0.0.0")


@pytest.mark.realparts
def test_connect_reports_an_unreachable_broker(tmp_path: Path) -> None:
    """--connect tries the broker: nothing listening names mqtt.host; without --connect
    the same file is OK (serve would start and retry the broker)."""
    data = base(tmp_path)
    p = tmp_path / "c.toml"
    p.write_text(toml_dump(data))
    r = subprocess.run([*CLI, "check-config", "--connect", str(p)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2
    assert f"configuration error: mqtt.host: broker 127.0.0.1:{data['mqtt']['port']}" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([*CLI, "check-config", str(p)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.realparts
def test_connect_reports_refused_credentials(tmp_path: Path) -> None:
    """--connect with a wrong broker password names mqtt.host with the refusal."""
    from harness.mosquitto import Mosquitto

    with Mosquitto(users={"controlroom": "right-password-1"}) as m:
        data = base(tmp_path)
        data["mqtt"] = {"port": m.port, "username": "controlroom", "password": "wrong-password-1"}
        p = tmp_path / "c.toml"
        p.write_text(toml_dump(data))
        r = subprocess.run([*CLI, "check-config", "--connect", str(p)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2 and "mqtt.host: broker 127.0.0.1" in r.stderr, r.stderr
        data["mqtt"]["password"] = "right-password-1"
        p.write_text(toml_dump(data))
        r = subprocess.run([*CLI, "check-config", "--connect", str(p)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr


def test_a_shared_store_without_the_global_queue_is_noted(tmp_path: Path) -> None:
    """Several nodes on one PostgreSQL store each route their own calls unless
    cluster.global_queue is on: check-config says so (and still passes); with the global
    queue on it says nothing."""
    data = base(tmp_path)
    data["storage"]["url"] = "postgresql://controlroom@127.0.0.1:5432/controlroom"
    p = tmp_path / "shared.toml"
    p.write_text(toml_dump(data))
    r = subprocess.run([*CLI, "check-config", str(p)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr
    assert "note: storage.url is a shared PostgreSQL store but cluster.global_queue is false" \
        in r.stdout
    data["cluster"] = {"global_queue": True}
    p.write_text(toml_dump(data))
    r = subprocess.run([*CLI, "check-config", str(p)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr
    assert "note:" not in r.stdout
