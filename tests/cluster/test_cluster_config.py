"""Cluster configuration: node ids, and the dispatcher configs Kamailio accepts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from config import ConfigError, from_dict
from harness.kamailio import Kamailio, dispatcher_list

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
LINES = [{"name": "999", "numbers": ["999"], "priority": 0}]


def test_node_id_defaults_to_the_mqtt_node_name() -> None:
    """Without [cluster] node_id the node is called by mqtt.node; with it, by node_id."""
    assert from_dict({"lines": LINES, "mqtt": {"node": "fcr7"}}).node_id == "fcr7"
    s = from_dict({"lines": LINES, "mqtt": {"node": "fcr7"}, "cluster": {"node_id": "n2"}})
    assert s.node_id == "n2"


@pytest.mark.parametrize("bad", ["", "a/b", "n 1", "x" * 33, "n+1"])
def test_a_node_id_that_cannot_start_a_call_id_is_refused(bad: str) -> None:
    """A node id goes into call ids, file names and topics: letters, digits, - and _."""
    data = {"lines": LINES, "cluster": {"node_id": bad}} if bad else \
        {"lines": LINES, "mqtt": {"node": bad}}
    with pytest.raises(ConfigError, match="cluster.node_id|mqtt.node"):
        from_dict(data)


def test_dispatcher_list_names_every_node_probed_in_set_1_and_unprobed_in_set_2() -> None:
    """Set 1: the nodes, probed (flags 8); set 2: the same, the never-marked last
    resort; an address with a space is refused."""
    text = dispatcher_list(["10.0.0.11:5060", "10.0.0.12:5060"])
    assert [ln for ln in text.splitlines() if not ln.startswith("#")] == [
        "1 sip:10.0.0.11:5060 8 0", "1 sip:10.0.0.12:5060 8 0",
        "2 sip:10.0.0.11:5060 0 0", "2 sip:10.0.0.12:5060 0 0"]
    with pytest.raises(ValueError):
        dispatcher_list(["10.0.0.11 :5060"])


@pytest.mark.realparts
@pytest.mark.skipif(not Path(KAMAILIO).exists(), reason="kamailio is not installed")
def test_harness_and_docker_dispatcher_configs_pass_kamailio_check(tmp_path: Path) -> None:
    """The harness's dispatcher mode and docker/kamailio.cfg both pass ``kamailio -c``
    (modules present, failover flag, failure route syntax)."""
    k = Kamailio(dispatch=["10.0.0.11:5060", "10.0.0.12:5060"], workdir=tmp_path / "h")
    (tmp_path / "h").mkdir()
    k.cfg_path.write_text(k.config_text())
    k.list_path.write_text(dispatcher_list(k.dispatch))
    r = subprocess.run([KAMAILIO, "-c", "-f", str(k.cfg_path)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr[-3000:]
    dl = tmp_path / "dispatcher.list"
    shutil.copy(ROOT / "docker" / "dispatcher.list", dl)
    dl.write_text(dl.read_text().replace("controlroom:5080", "127.0.0.1:5080"))  # no DNS here
    r = subprocess.run([KAMAILIO, "-c", "-f", str(ROOT / "docker" / "kamailio.cfg"),
                        "-A", f'DISPATCHER_LIST="{dl}"', "-A", "LISTEN=udp:127.0.0.1:5999"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr[-3000:]
