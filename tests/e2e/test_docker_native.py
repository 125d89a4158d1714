"""docker/ as written, without a container daemon: the same Kamailio config, Mosquitto
config (password auth, password file made as compose.yaml makes it) and controlroom
config as docker/compose.yaml runs, started natively with test values substituted
(addresses, ports, paths, secret files), and a 999 call put through them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import aiomqtt
import pytest

from harness import scenarios
from harness.kamailio import KAMAILIO, Process, sip_options, sip_register
from harness.ports import free_rtp_range, free_tcp_port, free_udp_port
from harness.sipp import Sipp

from .conftest import wait_until

pytestmark = [pytest.mark.realparts, pytest.mark.slow]

DOCKER = Path(__file__).resolve().parents[2] / "docker"
HOST_ADDRESS = "192.0.2.10"  # the address docker/ ships with, marked CHANGE
SECRETS = {"admin_password": "first-admin-Pa55phrase!", "mqtt_password": "mqtt-Pa55-controlroom",
           "cad_mqtt_password": "mqtt-Pa55-cad-client", "metrics_token": "scrape-token-4f9c2e"}


def test_compose_names_only_files_that_are_in_docker() -> None:
    """Every file compose.yaml mounts or builds from is in docker/ (secrets are the
    operator's, listed in docker/README.md); no package is installed at start; every
    service has a healthcheck; no trunk trusts everyone; Mosquitto refuses anonymous."""
    compose = (DOCKER / "compose.yaml").read_text()
    for rel in re.findall(r"\./([\w.\-]+)(?=[:\s])", compose):
        if rel == "secrets":
            continue
        assert (DOCKER / rel).exists(), rel
    for dockerfile in re.findall(r"dockerfile: ([\w./-]+)", compose):
        assert (DOCKER.parent / dockerfile).exists() or (DOCKER / dockerfile).exists(), dockerfile
    assert "apt-get" not in compose
    services = re.findall(r"^  (\w+):\n", compose.split("\nsecrets:")[0], re.M)
    assert services == ["kamailio", "mosquitto", "controlroom"]
    assert compose.count("healthcheck:") == 3
    readme = (DOCKER / "README.md").read_text()
    for name in SECRETS:
        assert f"secrets/{name}" in readme
    toml = (DOCKER / "controlroom.toml").read_text()
    assert "0.0.0.0/0" not in toml and 'public_host = "192.0.2.10"' in toml
    assert "allow_anonymous false" in (DOCKER / "mosquitto.conf").read_text()
    assert "harness" not in (DOCKER / "Dockerfile").read_text().split("# The test harness")[1]


def _sub(text: str, pairs: dict[str, str]) -> str:
    for old, new in pairs.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


async def _cad(port: int, password: str, out: list[dict], ready: asyncio.Event) -> None:
    async with aiomqtt.Client("127.0.0.1", port, username="cad", password=password,
                              identifier="test-cad-docker") as c:
        await c.subscribe("controlroom/#", qos=1)
        ready.set()
        async for msg in c.messages:
            try:
                out.append(json.loads(bytes(msg.payload)))  # type: ignore[arg-type]
            except ValueError:
                pass


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


async def test_999_call_through_docker_configs_run_natively(tmp_path: Path) -> None:
    """Mosquitto with docker/mosquitto.conf refuses anonymous clients and takes the
    secrets' users; Kamailio with docker/kamailio.cfg + dispatcher.list dispatches a 999
    from the SBC source to the node and refuses one from elsewhere; controlroom with
    docker/controlroom.toml passes check-config --connect, creates the first admin from
    its secret file, answers, offers and bridges the call, publishes it to the CAD, and
    serves /metrics only on its own port with the token."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name, value in SECRETS.items():
        (secrets / name).write_text(value + "\n")
    mqtt_port, sip_port, kam_port = free_tcp_port(), free_udp_port(), free_udp_port()
    web_port, metrics_port = free_tcp_port(), free_tcp_port()
    rtp_min, rtp_max = free_rtp_range(40)
    procs: list[Process] = []
    try:
        # -- Mosquitto: docker/mosquitto.conf; the password file as compose.yaml makes it
        mq = tmp_path / "mosquitto"
        mq.mkdir()
        conf = _sub((DOCKER / "mosquitto.conf").read_text(), {
            "/mosquitto/data/": f"{mq}/", "listener 1883 0.0.0.0": f"listener {mqtt_port} 127.0.0.1",
            "log_dest stdout": f"log_dest file {mq}/mosquitto.log"})
        if os.geteuid() == 0:  # as root, Mosquitto drops to 'mosquitto', who cannot read tmp
            conf += "user root\n"
        (mq / "mosquitto.conf").write_text(conf)
        subprocess.run(["mosquitto_passwd", "-c", "-b", str(mq / "passwd"), "controlroom",
                        SECRETS["mqtt_password"]], check=True, capture_output=True)
        subprocess.run(["mosquitto_passwd", "-b", str(mq / "passwd"), "cad",
                        SECRETS["cad_mqtt_password"]], check=True, capture_output=True)
        procs.append(Process(["mosquitto", "-c", str(mq / "mosquitto.conf")],
                             log_path=mq / "stdout.log"))

        # -- Kamailio: docker/kamailio.cfg as compose runs it (-A), the node list with
        #    the host address substituted
        kd = tmp_path / "kamailio"
        kd.mkdir()
        (kd / "dispatcher.list").write_text(_sub((DOCKER / "dispatcher.list").read_text(), {
            f"{HOST_ADDRESS}:5080": f"127.0.0.1:{sip_port}"}))
        procs.append(Process([KAMAILIO, "-DD", "-E", "-f", str(DOCKER / "kamailio.cfg"),
                              "-A", f"LISTEN=udp:127.0.0.1:{kam_port}",
                              "-A", 'SBC_SOURCES="127.0.0.1/32"',
                              "-A", f'DISPATCHER_LIST="{kd / "dispatcher.list"}"',
                              "-m", "64", "-M", "8", "-Y", str(kd), "-P", str(kd / "pid")],
                             log_path=kd / "kamailio.log", cwd=kd))
        deadline = time.monotonic() + 15
        while sip_options(("127.0.0.1", kam_port), timeout=0.2) != 200:
            assert procs[-1].alive() and time.monotonic() < deadline, procs[-1].log_text()

        # -- controlroom: docker/controlroom.toml with test values
        data = tmp_path / "data"
        cfg = tmp_path / "controlroom.toml"
        cfg.write_text(_sub((DOCKER / "controlroom.toml").read_text(), {
            HOST_ADDRESS + '"': '127.0.0.1"', f"{HOST_ADDRESS}:5060": f"127.0.0.1:{kam_port}",
            'bind = "0.0.0.0"\nport = 5080': f'bind = "127.0.0.1"\nport = {sip_port}',
            'rtp_bind = "0.0.0.0"': 'rtp_bind = "127.0.0.1"',
            "rtp_port_min = 20000": f"rtp_port_min = {rtp_min}",
            "rtp_port_max = 20399": f"rtp_port_max = {rtp_max}",
            "port = 1883": f"port = {mqtt_port}",
            "/var/lib/controlroom": str(data),
            "/run/secrets/": f"{secrets}/",
            'bind = "0.0.0.0"\nport = 8080': f'bind = "127.0.0.1"\nport = {web_port}',
            'metrics_bind = "0.0.0.0"': 'metrics_bind = "127.0.0.1"',
            "metrics_port = 9102": f"metrics_port = {metrics_port}"}))
        assert not [ln for ln in cfg.read_text().splitlines()
                    if "192.0.2" in ln.split("#")[0]]  # every address substituted
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
               "CONTROLROOM_MODEL_CACHE": str(tmp_path / "models")}
        cli = [sys.executable, "-m", "controlroom.cli"]
        check = subprocess.run([*cli, "check-config", "--connect", str(cfg)], env=env,
                               capture_output=True, text=True, timeout=300)
        assert check.returncode == 0, check.stderr
        assert "broker and database reachable" in check.stdout

        # an anonymous client is refused, the CAD's user is taken
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", mqtt_port, identifier="anon", timeout=5):
                pass
        cad: list[dict] = []
        ready = asyncio.Event()
        cad_task = asyncio.create_task(_cad(mqtt_port, SECRETS["cad_mqtt_password"], cad, ready))
        await asyncio.wait_for(ready.wait(), 10)

        log = tmp_path / "serve.log"
        serve = Process([*cli, "serve", "--config", str(cfg)], log_path=log, env=env)
        procs.append(serve)
        await wait_until(lambda: "controlroom serving" in serve.log_text(), 240,
                         "controlroom serving")

        # the first admin (from its secret file) logs in and adds handler h1, who logs
        # in and makes themself available: the console as people use it
        base = f"http://127.0.0.1:{web_port}"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.post(f"{base}/api/login", json={
                    "username": "admin", "password": SECRETS["admin_password"]}) as r:
                assert r.status == 200, await r.text()
                me = await r.json()
            assert "admin" in me["roles"]
            async with http.post(f"{base}/api/admin/users", headers={"X-CSRF-Token": me["csrf"]},
                                 json={"username": "h1", "password": "handler-one-Pa55phrase",
                                       "roles": ["handler"], "handler_id": "h1"}) as r:
                assert r.status == 200, await r.text()
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.post(f"{base}/api/login", json={
                    "username": "h1", "password": "handler-one-Pa55phrase"}) as r:
                assert r.status == 200, await r.text()
                me = await r.json()
            async with http.post(f"{base}/api/desk/state", headers={"X-CSRF-Token": me["csrf"]},
                                 json={"state": "available"}) as r:
                assert r.status == 200, await r.text()

        with Sipp(scenarios.handler(user="h1", ring_ms=300, hangup="remote"), calls=1,
                  timeout=120, name="phone-h1") as phone:
            assert sip_register(("127.0.0.1", kam_port), "h1", phone.contact("h1"),
                                domain="controlroom.local") == 200
            # a caller that is not an SBC source is refused by Kamailio
            stranger = Sipp(scenarios.caller(dialled="999", expect_status=403),
                            target=("127.0.0.1", kam_port), calls=1, timeout=30,
                            name="stranger", host="127.0.0.2").start()
            caller = Sipp(scenarios.caller(dialled="999", caller_id="07700900456",
                                           talk_ms=2000, hangup="caller"),
                          target=("127.0.0.1", kam_port), calls=1, timeout=90,
                          name="caller").start()
            db = data / "controlroom.sqlite3"

            def answered() -> bool:
                with sqlite3.connect(db) as c:
                    return c.execute("SELECT COUNT(*) FROM calls WHERE line='999' AND"
                                     " answered_at IS NOT NULL").fetchone()[0] == 1
            await wait_until(answered, 60, "the 999 call answered by h1")
            await asyncio.to_thread(caller.wait, 60)
            assert caller.successful == 1, caller.diagnostics()
            await asyncio.to_thread(stranger.wait, 30)
            assert stranger.successful == 1, stranger.diagnostics()
            with sqlite3.connect(db) as c:
                assert c.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 1
                call_id = c.execute("SELECT call_id FROM calls").fetchone()[0]
        await wait_until(lambda: any(m.get("call_id") == call_id and m.get("type") == "call.ended"
                                     for m in cad), 30, "call.ended on the CAD's subscription")
        types = [m["type"] for m in cad if m.get("call_id") == call_id]
        assert {"call.arrived", "call.offered", "call.answered", "call.ended"} <= set(types)
        cad_task.cancel()

        # health on the console; /metrics only on its own port, only with the token
        status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{web_port}/healthz")
        assert status == 200 and json.loads(body)["status"] in ("ok", "degraded")
        assert (await asyncio.to_thread(_get, f"http://127.0.0.1:{web_port}/metrics"))[0] == 404
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        assert (await asyncio.to_thread(_get, url))[0] == 401
        assert (await asyncio.to_thread(_get, url, "wrong"))[0] == 401
        for _ in range(50):  # CAD latency is read from the outbox every 2 s
            status, text = await asyncio.to_thread(_get, url, SECRETS["metrics_token"])
            assert status == 200
            if "controlroom_cad_latency_seconds_count" in text:
                break
            await asyncio.sleep(0.2)
        assert 'controlroom_calls_total{line="999",outcome="answered"} 1.0' in text
        assert "controlroom_answer_seconds_bucket" in text
        assert 'controlroom_routing_decision_seconds_bucket{decision="call_arrived"' in text
        assert "controlroom_cad_latency_seconds_count" in text
        assert 'controlroom_disk{stat="free_bytes",volume="recordings"}' in text
        assert "process_resident_memory_bytes" in text
        for secret_value in SECRETS.values():
            assert secret_value not in serve.log_text()
    finally:
        for p in reversed(procs):
            p.stop(timeout=20, sig=signal.SIGTERM)
