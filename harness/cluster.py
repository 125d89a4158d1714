"""Several controlroom nodes behind one Kamailio dispatcher, for tests and benchmarks.

Theory of operation::

    SIPp callers ──► Kamailio (dispatcher, registrar) ──► node n1 ┐ each a real
    (999, 101)        on the hub address                ──► node n2 ├ ``controlroom serve``
    SIPp phone banks ◄── handler legs, via Kamailio  ◄── node n3 ┘ process
    Mosquitto (CAD broker) on the hub address ◄── every node's CAD publisher

:class:`NamespaceNet` gives every node its own network namespace, joined to the host by
a veth pair on a bridge whose address (the *hub*) carries Kamailio, Mosquitto and the
SIPp processes: cutting a node's network is a real cut (:meth:`NamespaceNet.cut` sets
the host end of its veth down: its cable pulled at the switch; the node process lives
on and sees nothing come back). Where namespaces cannot be made (not root),
:class:`LoopbackNet` puts each node on its own ``127.0.0.x`` address instead (no cut).

:class:`Cluster` starts the hub's peers and the nodes (each with its own handler phones:
one queue per node; each with its own SQLite store, or with ``postgres=True`` one shared
throw-away PostgreSQL listening on the bridge's second address (:meth:`NamespaceNet.cut_store`
cuts one node from it alone), the nodes' recordings folders visible
to each other as on a shared file system, so a survivor salvages a dead node's calls),
and kills (``SIGKILL``) or cuts a node. :class:`CallerLoad` is a SIPp caller at a steady
rate whose scenario logs, per call, when the INVITE left, when it was answered and by
which node, and how the caller's BYE fared: :func:`outcomes` reads it back.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from .kamailio import HarnessError, Kamailio, Process
from .mosquitto import Mosquitto
from .ports import free_tcp_port, free_udp_port
from .sipp import Sipp

IP = shutil.which("ip") or "/usr/sbin/ip"
ROOT = Path(__file__).resolve().parent.parent
"""The source tree this harness belongs to."""
DOMAIN = "controlroom.local"


# -- addresses -----------------------------------------------------------------------

def namespaces_available() -> bool:
    """True when this process may make network namespaces (root with ``ip``)."""
    return os.geteuid() == 0 and Path(IP).exists()


def _ip(*args: str) -> None:
    r = subprocess.run([IP, *args], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        raise HarnessError(f"ip {' '.join(args)}: {r.stderr.strip()}")


class LoopbackNet:
    """Hub on 127.0.0.1, node ``i`` on ``127.0.0.(11+i)``; no namespaces, no cut."""

    can_cut = False

    def __init__(self, nodes: int) -> None:
        self.hub = "127.0.0.1"
        self.store = self.hub
        """Where the shared PostgreSQL listens."""
        self.nodes = [f"127.0.0.{11 + i}" for i in range(nodes)]
        self.own_ports = False
        """Whether every node has its own port space (namespaces): fixed ports then."""

    def prefix(self, i: int) -> list[str]:
        """The command prefix that runs a program in node ``i``'s network."""
        return []

    def cut(self, i: int) -> None:
        raise HarnessError("a network cut needs network namespaces (run as root)")

    def restore(self, i: int) -> None:
        raise HarnessError("a network cut needs network namespaces (run as root)")

    def cut_store(self, i: int) -> None:
        raise HarnessError("a network cut needs network namespaces (run as root)")

    def restore_store(self, i: int) -> None:
        raise HarnessError("a network cut needs network namespaces (run as root)")

    def close(self) -> None:
        pass


class NamespaceNet:
    """A bridge on the host (the hub address) and one namespace per node on a veth.

    Names carry a random tag so parallel runs never meet; :meth:`close` deletes every
    namespace, veth and the bridge (also after a failure)."""

    can_cut = True

    def __init__(self, nodes: int) -> None:
        self.tag = f"{random.randrange(16**4):04x}"
        used = subprocess.run([IP, "-4", "-o", "addr"], capture_output=True,
                              text=True).stdout
        for _ in range(100):
            net = f"10.{random.randrange(200, 250)}.{random.randrange(256)}"
            if f" {net}." not in used:
                break
        self.net = net
        self.hub = f"{net}.1"
        self.store = f"{net}.2"
        """Where the shared PostgreSQL listens: a second address of the bridge, so one
        node's path to the store alone can be cut (:meth:`cut_store`)."""
        self.dead_hop = f"{net}.250"
        """An address nobody answers ARP for: the next hop of a cut store route."""
        self.nodes = [f"{net}.{11 + i}" for i in range(nodes)]
        self.bridge = f"crb{self.tag}"
        self.namespaces = [f"cr-{self.tag}-n{i + 1}" for i in range(nodes)]
        self.veths = [f"cr{self.tag}v{i + 1}" for i in range(nodes)]
        self.own_ports = True
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.hub}/24", "dev", self.bridge)
            _ip("addr", "add", f"{self.store}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for ns, veth, addr in zip(self.namespaces, self.veths, self.nodes, strict=True):
                _ip("netns", "add", ns)
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("link", "set", veth, "master", self.bridge, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
        except BaseException:
            self.close()
            raise

    def prefix(self, i: int) -> list[str]:
        return [IP, "netns", "exec", self.namespaces[i]]

    def cut(self, i: int) -> None:
        """Node ``i``'s cable pulled: the host end of its veth goes down; packets to and
        from the node are dropped without an answer (no ICMP, no reset)."""
        _ip("link", "set", self.veths[i], "down")

    def restore(self, i: int) -> None:
        _ip("link", "set", self.veths[i], "up")

    def cut_store(self, i: int) -> None:
        """Node ``i`` loses the store only (a firewall or a switch port between it and
        the database): its packets to the store's address go to a next hop that never
        answers, so an open connection hangs unanswered (no reset) and a new one fails
        after ARP gives up; Kamailio, the phones and the broker still reach it."""
        _ip("-n", self.namespaces[i], "route", "replace", f"{self.store}/32",
            "via", self.dead_hop)

    def restore_store(self, i: int) -> None:
        _ip("-n", self.namespaces[i], "route", "del", f"{self.store}/32")

    def close(self) -> None:
        for ns in self.namespaces:  # deleting a namespace deletes its end of the veth
            subprocess.run([IP, "netns", "del", ns], capture_output=True, timeout=10)
        subprocess.run([IP, "link", "del", self.bridge], capture_output=True, timeout=10)


# -- callers -------------------------------------------------------------------------

def caller_scenario(*, dialled: str, talk_ms: int, caller_id: str = "07700900123") -> str:
    """A SIPp caller that logs its call (``-trace_logs``) for :func:`outcomes`:

    ``SENT <n> <s> <us> <Call-ID>`` as the INVITE leaves, ``ANSWER <n> <s> <us> <node address>``
    on the 200 (the Contact's address names the node that answered), then after
    ``talk_ms`` a BYE and ``BYE <n> <status>``: 200, or 408/481/500/503 when the node is
    gone (in-dialog requests follow the Record-Route to the node that answered).
    """
    from_ = f"From: <sip:{caller_id}@[local_ip]:[local_port]>;tag=[pid]-[call_number]-c"
    to = f"To: <sip:{dialled}@[remote_ip]:[remote_port]>"
    dialog = f"{from_}\n{to}[peer_tag_param]\nCall-ID: [call_id]\nMax-Forwards: 70\n"
    sdp = ("v=0\no=sipp 1 1 IN IP4 [media_ip]\ns=-\nc=IN IP4 [media_ip]\nt=0 0\n"
           "m=audio [media_port] RTP/AVP 8 101\na=rtpmap:8 PCMA/8000\n"
           "a=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15\na=sendrecv\n")

    def log(text: str) -> str:
        return f'      <log message="{text}"/>\n'

    bye_lost = "".join(
        f'  <recv response="{code}" response_txn="bye" optional="true" next="lost{code}"/>\n'
        for code in (408, 481, 500, 503))
    lost = "".join(
        f'  <label id="lost{code}"/>\n  <nop>\n    <action>\n'
        f'{log(f"BYE [call_number] {code}")}    </action>\n  </nop>\n  <nop next="end"/>\n'
        for code in (408, 481, 500, 503))
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="cluster-caller">
  <nop>
    <action>
      <gettimeofday assign_to="s0,u0"/>
{log("SENT [call_number] [$s0] [$u0] [call_id]")}    </action>
  </nop>
  <send retrans="500" start_txn="invite"><![CDATA[
INVITE sip:{dialled}@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
{from_}
{to}
Call-ID: [call_id]
Max-Forwards: 70
CSeq: 1 INVITE
Contact: <sip:{caller_id}@[local_ip]:[local_port]>
User-Agent: sipp-cluster-caller
Content-Type: application/sdp
Content-Length: [len]

{sdp}
]]></send>
  <recv response="100" optional="true" response_txn="invite"/>
  <recv response="180" optional="true" response_txn="invite"/>
  <recv response="183" optional="true" response_txn="invite"/>
  <recv response="200" rtd="true" rrs="true" response_txn="invite">
    <action>
      <gettimeofday assign_to="s1,u1"/>
      <ereg regexp="[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+" search_in="hdr" header="Contact:"
            check_it="false" assign_to="node"/>
{log("ANSWER [call_number] [$s1] [$u1] [$node]")}    </action>
  </recv>
  <send ack_txn="invite"><![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
{dialog}[routes]
CSeq: 1 ACK
Contact: <sip:{caller_id}@[local_ip]:[local_port]>
Content-Length: 0
]]></send>
  <pause milliseconds="{talk_ms}"/>
  <send retrans="500" start_txn="bye"><![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
{dialog}[routes]
CSeq: 2 BYE
Content-Length: 0
]]></send>
{bye_lost}  <recv response="200" response_txn="bye"/>
  <nop>
    <action>
{log("BYE [call_number] 200")}    </action>
  </nop>
  <nop next="end"/>
{lost}  <label id="end"/>
</scenario>
"""


@dataclass
class CallOutcome:
    """One call as its caller saw it."""

    number: int
    line: str
    sent: float
    """Wall-clock time the INVITE left."""
    answered: float | None = None
    node: str = ""
    """Address of the node that answered (from the 200's Contact)."""
    bye: int | None = None
    """Status of the caller's BYE (200; 408 etc. when the node was gone)."""
    sip_call_id: str = ""
    """The SIP Call-ID (the calls row's ``sip_call_id`` on the node that answered)."""

    @property
    def setup(self) -> float | None:
        return None if self.answered is None else self.answered - self.sent


def _epoch(s: str, us: str) -> float:
    return float(s) + float(us) / 1e6


def outcomes(log_path: Path, line: str) -> list[CallOutcome]:
    """The calls logged by a :func:`caller_scenario` SIPp (``-log_file``)."""
    calls: dict[int, CallOutcome] = {}
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    for raw in text.splitlines():
        parts = raw.split()
        if len(parts) < 3 or parts[0] not in ("SENT", "ANSWER", "BYE"):
            continue
        try:
            n = int(parts[1])
            if parts[0] == "SENT":
                calls[n] = CallOutcome(n, line, _epoch(parts[2], parts[3]),
                                       sip_call_id=parts[4] if len(parts) > 4 else "")
            elif parts[0] == "ANSWER" and n in calls:
                calls[n].answered = _epoch(parts[2], parts[3])
                calls[n].node = parts[4] if len(parts) > 4 else ""
            elif parts[0] == "BYE" and n in calls:
                calls[n].bye = int(parts[2])
        except (ValueError, IndexError):
            continue
    return sorted(calls.values(), key=lambda c: c.sent)


class CallerLoad:
    """A SIPp caller placing ``calls`` calls to ``dialled`` at ``rate`` a second."""

    def __init__(self, cluster: Cluster, dialled: str, *, rate: float, calls: int,
                 talk_ms: int = 3000, name: str = "") -> None:
        self.line = dialled
        name = name or f"callers-{dialled}"
        workdir = cluster.workdir / name
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "calls.log"
        self.sipp = Sipp(caller_scenario(dialled=dialled, talk_ms=talk_ms),
                         target=cluster.kamailio.addr, host=cluster.net.hub, calls=calls,
                         rate=rate, trace_msg=False, timeout=calls / rate + talk_ms / 1000 + 60,
                         name=name, workdir=workdir,
                         extra_args=["-trace_logs", "-log_file", str(self.log_path)])

    def start(self) -> CallerLoad:
        self.sipp.start()
        return self

    def wait(self, timeout: float) -> int:
        return self.sipp.wait(timeout)

    def stop(self) -> None:
        self.sipp.stop()

    def outcomes(self) -> list[CallOutcome]:
        return outcomes(self.log_path, self.line)


# -- CAD -----------------------------------------------------------------------------

class CadCollector:
    """Every CAD call message of every node (``<prefix>/+/calls/#``, QoS 1), in arrival
    order, from a paho client in its own thread."""

    def __init__(self, host: str, port: int, prefix: str = "controlroom") -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                   client_id=f"cad-collector-{random.randrange(1 << 30):x}")
        topic = f"{prefix}/+/calls/#"

        def on_connect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            client.subscribe(topic, qos=1)

        def on_subscribe(*_: Any) -> None:
            self._ready.set()

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            with contextlib.suppress(ValueError):
                with self._lock:
                    self.messages.append(json.loads(msg.payload))

        self._client.on_connect = on_connect
        self._client.on_subscribe = on_subscribe
        self._client.on_message = on_message
        self._client.connect(host, port)
        self._client.loop_start()
        if not self._ready.wait(10):
            self.close()
            raise HarnessError("CAD collector did not subscribe in 10 s")

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.disconnect()
        self._client.loop_stop()


# -- nodes ---------------------------------------------------------------------------

@dataclass
class Node:
    """One controlroom node: a ``controlroom serve`` process in its own network."""

    index: int
    node_id: str
    addr: str
    sip_port: int
    web_port: int
    workdir: Path
    handlers: list[str]
    config_path: Path
    proc: Process | None = None
    phones: Sipp | None = None
    killed_at: float | None = None
    cut_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    store_url: str = ""
    """The cluster's shared PostgreSQL store ('' : the node's own SQLite file)."""

    @property
    def sip(self) -> str:
        return f"{self.addr}:{self.sip_port}"

    @property
    def database(self) -> Path:
        return self.workdir / "data" / "controlroom.sqlite3"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def get(self, path: str, timeout: float = 1.0) -> tuple[int, str]:
        """HTTP GET on the node's console (``/readyz``, ``/metrics``)."""
        try:
            with urllib.request.urlopen(f"http://{self.addr}:{self.web_port}{path}",
                                        timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    def calls(self) -> list[dict[str, Any]]:
        """The node's calls rows (read-only; works after a kill -9: SQLite WAL)."""
        import sqlite3

        if self.store_url:
            return store_query(self.store_url, "SELECT * FROM calls WHERE node=%s",
                               (self.node_id,))
        if not self.database.exists():
            return []
        conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM calls")]
        finally:
            conn.close()



def log_lines(log: str, *needles: str) -> list[tuple[float, dict[str, Any]]]:
    """(epoch s, record) of a node's JSON log lines that hold any of ``needles`` as a
    quoted string (an event name, a CAD message type); unreadable lines are skipped."""
    from datetime import datetime

    out = []
    for line in log.splitlines():
        if not any(f'"{n}"' in line for n in needles):
            continue
        try:
            rec = json.loads(line)
            at = datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        out.append((at, rec))
    return out


def wait_for(pred: Any, timeout: float, step: float = 0.2) -> Any:
    """Poll ``pred()`` every ``step`` s until it returns something true or ``timeout`` s
    pass; returns its last value (bounded: never waits past the timeout by more than one
    poll)."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(step)


class Cluster:
    """Mosquitto, Kamailio (dispatcher) and ``nodes`` controlroom nodes; a context manager.

    Args:
        nodes: how many controlroom nodes.
        workdir: where configs, logs, stores go (kept: tests put it under tmp_path).
        handlers: handler phones per node (``<node>h1..``), all with skills 999 and 101.
        namespaces: a network namespace per node (default: when root); else 127.0.0.x.
        ring_ms: how long handler phones ring before answering.
        wrapup: wrap-up seconds after each call.
    """

    def __init__(self, workdir: Path, *, nodes: int = 3, handlers: int = 4,
                 namespaces: bool | None = None, ring_ms: int = 300, wrapup: float = 0.5,
                 offer_timeout: float = 5.0, probe_interval: int = 1,
                 dispatch_fr_ms: int = 500, postgres: bool = False,
                 heartbeat_interval: float = 0.5, salvage_after: float = 2.0,
                 global_queue: bool = False, handler_nodes: list[int] | None = None,
                 handler_talk_ms: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.n = nodes
        self.handlers_per_node = handlers
        self.use_namespaces = namespaces_available() if namespaces is None else namespaces
        self.ring_ms = ring_ms
        self.wrapup = wrapup
        self.offer_timeout = offer_timeout
        self.probe_interval = probe_interval
        self.dispatch_fr_ms = dispatch_fr_ms
        self.use_postgres = postgres
        """One shared PostgreSQL store on the hub address (else a SQLite file per node);
        the nodes' recordings folders are then visible to each other (one machine: a
        shared file system), so survivors salvage a dead node's calls."""
        self.heartbeat_interval = heartbeat_interval
        self.global_queue = global_queue
        """One queue for the room (``cluster.global_queue``; needs ``postgres``): every node
        lists every handler, and the routing leader offers any node's calls to them."""
        self.handler_nodes = handler_nodes
        self.handler_talk_ms = handler_talk_ms
        """Phones hang up this long after answering (None: they wait for the caller's BYE)."""
        """Indices of the nodes whose desks have handlers (phones); None: every node."""
        self.salvage_after = salvage_after
        self.trace_phones = False
        """The handler phones trace every SIP message (``<node>/phones/*messages.log``):
        tests that check from the phones' side what rang when set it before start."""
        self.store_url = ""
        self.postgres: Any = None
        """The shared PostgreSQL (``postgres=True``): tests stop and start it."""
        self.net: LoopbackNet | NamespaceNet
        self.mosquitto: Mosquitto
        self.kamailio: Kamailio
        self.nodes: list[Node] = []
        self.cad: CadCollector | None = None
        self._closers: list[Any] = []

    # -- lifecycle ---------------------------------------------------------------
    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.net = NamespaceNet(self.n) if self.use_namespaces else LoopbackNet(self.n)
        self._closers.append(self.net.close)
        self.mosquitto = Mosquitto(host=self.net.hub)
        self.mosquitto.start()
        self._closers.append(self.mosquitto.close)
        if self.use_postgres:
            from .postgres import Postgres

            pg = Postgres(host=self.net.store)
            self._closers.append(pg.close)
            pg.start()
            self.postgres = pg
            self.store_url = pg.database("cluster")
        for i, addr in enumerate(self.net.nodes):
            node_id = f"n{i + 1}"
            own = self.net.own_ports
            workdir = self.workdir / node_id
            workdir.mkdir(parents=True, exist_ok=True)
            self.nodes.append(Node(
                index=i, node_id=node_id, addr=addr,
                sip_port=5060 if own else free_udp_port(),
                web_port=8080 if own else free_tcp_port(), workdir=workdir,
                handlers=([f"{node_id}h{j + 1}" for j in range(self.handlers_per_node)]
                          if self.handler_nodes is None or i in self.handler_nodes else []),
                config_path=workdir / "controlroom.toml", store_url=self.store_url))
        self.kamailio = Kamailio(domain=DOMAIN, host=self.net.hub, trace=False,
                                 children=2, workdir=self.workdir / "kamailio",
                                 dispatch=[n.sip for n in self.nodes],
                                 probe_interval=self.probe_interval,
                                 dispatch_fr_ms=self.dispatch_fr_ms)
        (self.workdir / "kamailio").mkdir(exist_ok=True)
        self.kamailio.start()
        self._closers.append(self.kamailio.stop)
        self.cad = CadCollector(self.net.hub, self.mosquitto.port)
        self._closers.append(self.cad.close)
        for node in self.nodes:
            self._start_phones(node)
            self._start_node(node)
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            self.wait_ready(node, deadline - time.monotonic())
        self.warm_up()

    def warm_up(self, rounds: int = 4) -> None:
        """Short calls through the dispatcher (round-robin) until every node has answered
        one, so no node meets the measured load cold: a node's first call loads code and
        opens files, and a first INVITE unanswered for ``dispatch_fr_ms`` is failed over
        and the node marked down until its next OPTIONS probe. Bounded: ``rounds`` rounds
        of two calls per node, one probe interval apart."""
        answered: set[str] = set()
        for r in range(rounds):
            load = self.callers("101", rate=10, calls=2 * self.n, talk_ms=200,
                                name=f"warm-up-{r + 1}")
            load.start()
            load.wait(60)
            answered |= {c.node for c in load.outcomes() if c.answered is not None}
            if len(answered) >= self.n:
                return
            time.sleep(self.probe_interval + 0.5)
        raise HarnessError(f"warm-up: nodes answering {sorted(answered)} after {rounds} "
                           f"rounds, expected {self.net.nodes}\n"
                           f"{self.kamailio.log_text(4000)}")

    def close(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                node.proc.stop(timeout=5)
            if node.phones is not None:
                node.phones.stop()
        while self._closers:
            with contextlib.suppress(Exception):
                self._closers.pop()()

    # -- nodes -------------------------------------------------------------------
    def node_config(self, node: Node) -> dict[str, Any]:
        hub = self.net.hub
        if self.net.own_ports:
            rtp = (20000, 20999)
        else:
            base = random.randrange(33000, 60000, 2)
            rtp = (base, base + 399)
        return {
            "drain_timeout": 5.0,
            "cluster": {"node_id": node.node_id},
            "sip": {"bind": node.addr, "port": node.sip_port, "domain": DOMAIN,
                    "proxy": f"sip:{hub}:{self.kamailio.port}", "rtp_bind": node.addr,
                    "rtp_port_min": rtp[0], "rtp_port_max": rtp[1],
                    "dead_call_timeout": 60.0},
            "lines": [
                {"name": "999", "numbers": ["999", "112"], "priority": 0, "skill": "999",
                 "trusted_sources": [hub], "wrapup": self.wrapup,
                 "callback_on_abandon": True},
                {"name": "101", "numbers": ["101"], "priority": 1, "skill": "101",
                 "trusted_sources": [hub], "answer_threshold": 60.0, "wrapup": self.wrapup},
            ],
            "handlers": [{"id": h, "phone": f"sip:{h}@{DOMAIN}", "skills": ["999", "101"]}
                         for h in self.roster(node)],
            # global queue: a handler's desk is on their own node, which makes them ready
            "routing": {"offer_timeout": self.offer_timeout,
                        "handlers_start_available": bool(node.handlers)},
            "storage": {"data_dir": str(node.workdir / "data"),
                        **({"url": self.store_url,
                            "heartbeat_interval": self.heartbeat_interval}
                           if self.store_url else {})},
            **({"cluster": {"node_id": node.node_id, "salvage_after": self.salvage_after,
                            "global_queue": self.global_queue,
                            "peer_recordings": str(self.workdir / "{node}" / "data" /
                                                   "recordings")}}
               if self.store_url else {}),
            "mqtt": {"host": hub, "port": self.mosquitto.port, "node": node.node_id},
            "transcription": {"engine": "none", "live": False},
            "web": {"bind": node.addr, "port": node.web_port},
            "logging": {"level": "info", "json": True},
        }

    def roster(self, node: Node) -> list[str]:
        """The handlers ``node`` knows: its own, or with a global queue the whole room's."""
        if not self.global_queue:
            return node.handlers
        return [h for n in self.nodes for h in n.handlers]

    def leader(self) -> dict[str, Any]:
        """The routing lease row (``term``, ``holder``) of the global queue."""
        return store_query(self.store_url, "SELECT term, holder, since FROM routing_lease")[0]

    def _start_phones(self, node: Node) -> None:
        from . import scenarios

        (node.workdir / "phones").mkdir(exist_ok=True)
        scenario = (scenarios.handler(user=node.node_id, ring_ms=self.ring_ms)
                    if self.handler_talk_ms is None else
                    scenarios.handler(user=node.node_id, ring_ms=self.ring_ms,
                                      hangup="handler", talk_ms=self.handler_talk_ms))
        phones = Sipp(scenario,
                      calls=1_000_000, timeout=3600, name=f"phones-{node.node_id}",
                      trace_msg=self.trace_phones, workdir=node.workdir / "phones",
                      host=self.net.hub)
        node.phones = phones.start()
        for h in node.handlers:
            self.kamailio.register(h, phones.contact(h))

    def _start_node(self, node: Node) -> None:
        from config.dump import toml_dump

        node.config_path.write_text(toml_dump(self.node_config(node)))
        argv = [*self.net.prefix(node.index), sys.executable, "-c",
                "import sys; from controlroom.cli import main; sys.exit(main())",
                "serve", "--config", str(node.config_path)]
        # The node runs the code this harness comes from (not whatever is installed).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        node.proc = Process(argv, log_path=node.workdir / "node.log", cwd=node.workdir,
                            env=env)
        node.killed_at = None

    def wait_ready(self, node: Node, timeout: float = 30.0) -> None:
        """Until the node's ``/readyz`` says 200 (raises with its log if it dies)."""
        deadline = time.monotonic() + max(timeout, 1.0)
        while time.monotonic() < deadline:
            if node.proc is None or not node.proc.alive():
                raise HarnessError(f"node {node.node_id} exited:\n{self.node_log(node)}")
            if node.get("/readyz", timeout=0.5)[0] == 200:
                return
            time.sleep(0.1)
        raise HarnessError(f"node {node.node_id} not ready in {timeout:.0f} s:\n"
                           f"{self.node_log(node)}")

    def node_log(self, node: Node, tail: int = 6000) -> str:
        return node.proc.log_text(tail) if node.proc is not None else ""

    def restart(self, node: Node, timeout: float = 60.0, retry_s: float = 2.0) -> int:
        """Start a killed node again on the same store (its restart recovery runs), as a
        supervisor would: a start that exits at once (the node registry refuses an id
        whose last heartbeat is still fresh) is retried every ``retry_s``. Returns the
        number of starts."""
        deadline = time.monotonic() + timeout
        starts = 0
        while True:
            if node.proc is not None:
                node.proc.stop(timeout=1)
            self._start_node(node)
            starts += 1
            try:
                self.wait_ready(node, deadline - time.monotonic())
                return starts
            except HarnessError:
                if node.alive() or time.monotonic() + retry_s > deadline:
                    raise
            time.sleep(retry_s)

    # -- faults ------------------------------------------------------------------
    def kill(self, node: Node) -> float:
        """``kill -9`` the node's process; returns the wall-clock time of the kill."""
        assert node.proc is not None
        at = time.time()
        os.kill(node.proc.pid, signal.SIGKILL)  # ip netns exec execs: the pid is the node
        node.proc.wait(5)
        node.killed_at = at
        return at

    def cut(self, node: Node) -> float:
        """Cut the node's network (namespaces only); returns the time of the cut."""
        at = time.time()
        self.net.cut(node.index)
        node.cut_at = at
        return at

    def restore(self, node: Node) -> None:
        self.net.restore(node.index)
        node.cut_at = None

    def cut_store(self, node: Node) -> float:
        """Cut the node's path to the shared PostgreSQL alone (namespaces only; the
        phones, Kamailio and the broker still reach it); returns the time of the cut."""
        at = time.time()
        self.net.cut_store(node.index)
        return at

    def restore_store(self, node: Node) -> None:
        self.net.restore_store(node.index)

    # -- callers -----------------------------------------------------------------
    def callers(self, dialled: str, *, rate: float, calls: int, talk_ms: int = 3000,
                name: str = "") -> CallerLoad:
        return CallerLoad(self, dialled, rate=rate, calls=calls, talk_ms=talk_ms, name=name)

    def node_by_addr(self, addr: str) -> Node | None:
        return next((n for n in self.nodes if n.addr == addr), None)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0-1) by nearest rank; None for no values."""
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q * len(v) + 0.5) - 1))]


def fault_figures(cluster: Cluster, calls: list[CallOutcome], node: Node, fault_at: float,
                  *, talk_s: float, settle_s: float = 3.0) -> dict[str, Any]:
    """What callers and the CAD saw around a fault of ``node`` at ``fault_at``.

    * ``new``/``failed_new``: calls whose INVITE left at or after the fault, and those of
      them never answered (goal 0);
    * ``first_answer_s``: fault -> the first of those answered (by a survivor);
    * ``max_setup_s``: the slowest set-up among them (a call first sent to the dead node
      is answered by the next after ``dispatch_fr_ms``);
    * ``answered_by_faulty``: new calls answered by the faulty node (0 while it is away);
    * ``in_flight``: calls the faulty node had answered and was carrying at the fault,
      ``bye_lost`` how many of those callers' BYEs found no node (the media is lost);
    * ``cad_checked``/``cad_missing``: calls answered by the other nodes, and how many
      of them lack ``call.arrived`` or ``call.ended`` at the CAD (goal 0);
      ``cad_duplicates``: messages seen twice (allowed: same ``event_id``).
    """
    new = [c for c in calls if c.sent >= fault_at]
    answered = [c for c in new if c.answered is not None]
    in_flight = [c for c in calls if c.node == node.addr and c.answered is not None
                 and c.answered < fault_at < c.answered + talk_s]
    figures: dict[str, Any] = {
        "calls": len(calls),
        "new": len(new),
        "failed_new": len(new) - len(answered),
        "first_answer_s": (min(c.answered or 0.0 for c in answered) - fault_at
                           if answered else None),
        "max_setup_s": max((c.setup or 0.0) for c in answered) if answered else None,
        "answered_by_faulty": sum(1 for c in answered if c.node == node.addr),
        "in_flight": len(in_flight),
        "bye_lost": sum(1 for c in in_flight if c.bye != 200),
    }
    # CAD: every call a survivor answered has its arrival and its end at the broker.
    deadline = time.monotonic() + settle_s
    others = {n.addr: n for n in cluster.nodes if n is not node}
    rows: dict[str, dict[str, Any]] = {}
    for n in others.values():
        rows.update({r["sip_call_id"]: r for r in n.calls()})
    checked = [c for c in calls if c.node in others and c.bye == 200]
    missing: list[str] = []
    while True:
        msgs = cluster.cad.snapshot() if cluster.cad is not None else []
        seen: dict[str, set[str]] = {}
        for m in msgs:
            seen.setdefault(m.get("call_id", ""), set()).add(m.get("type", ""))
        missing = []
        for c in checked:
            row = rows.get(c.sip_call_id)
            types = seen.get(row["call_id"], set()) if row else set()
            if not {"call.arrived", "call.ended"} <= types:
                missing.append(row["call_id"] if row else c.sip_call_id)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    ids = [m.get("event_id") for m in msgs]
    figures.update(cad_checked=len(checked), cad_missing=len(missing),
                   cad_missing_ids=missing[:10], cad_duplicates=len(ids) - len(set(ids)),
                   wrong_node=sum(1 for m in msgs if not str(m.get("call_id", "")).startswith(
                       f"{m.get('node')}-")))
    return figures


OFFER_RELEASE = {"RINGNOANSWER", "OFFERFAIL", "RINGCANCELED", "COMPLETE", "TRANSFER"}


def priority_and_offers(rows: list[dict[str, Any]], *,
                        dead: dict[str, int] | None = None) -> dict[str, Any]:
    """Replay queue-log rows (``id``, ``call_id``, ``line``, ``handler_id``, ``event``) in
    id order, the order a routing leader decided in. Returns ``violations``: 101 offers
    made while a 999 that had reached the router waited (not offered, not over);
    ``doubles``: offers to a handler already holding an offer or a call; ``offers`` per
    line. ``dead`` maps a killed node to the first row id after its kill: from there its
    calls no longer wait (their callers went with the node; a survivor closes them on the
    record later); an offer of one made before the leader knew still holds its handler
    until the log releases it."""
    dead = dict(dead or {})
    waiting999: set[str] = set()
    ended: set[str] = set()
    busy: dict[str, str] = {}
    violations: list[tuple[int, str, list[str]]] = []
    doubles: list[tuple[int, str, str, str]] = []
    offers: dict[str, int] = {}
    for r in rows:
        for node, first in list(dead.items()):
            if r["id"] >= first:
                gone = {c for c in waiting999 | set(busy.values()) if c.startswith(f"{node}-")}
                waiting999 -= gone
                busy = {h: c for h, c in busy.items() if c not in gone}
                ended |= gone
                del dead[node]
        cid, ev, line, h = r["call_id"], r["event"], r["line"], r["handler_id"]
        if ev == "ENTER" and line == "999" and cid not in ended:
            waiting999.add(cid)
        elif ev == "OFFER":
            offers[line] = offers.get(line, 0) + 1
            waiting999.discard(cid)
            if line != "999" and waiting999:
                violations.append((r["id"], cid, sorted(waiting999)))
            if h in busy:
                doubles.append((r["id"], h, busy[h], cid))
            busy[h] = cid
        elif ev in OFFER_RELEASE:
            if h and busy.get(h) == cid:
                del busy[h]
            if ev in ("RINGNOANSWER", "OFFERFAIL", "RINGCANCELED") and line == "999" \
                    and cid not in ended:
                waiting999.add(cid)
        if ev in ("ABANDON", "COMPLETE"):
            ended.add(cid)
            waiting999.discard(cid)
            busy = {k: v for k, v in busy.items() if v != cid}
    return {"violations": violations, "doubles": doubles, "offers": offers}


def store_query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Rows of a read on the cluster's PostgreSQL store, as dicts."""
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        return [dict(r) for r in conn.execute(sql, params).fetchall()]


def keep_dir(prefix: str = "cluster-") -> Path:
    """A fresh directory for a cluster run (benchmarks; tests use ``tmp_path``)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


__all__ = ["CadCollector", "CallOutcome", "CallerLoad", "Cluster", "LoopbackNet",
           "NamespaceNet", "Node", "caller_scenario", "fault_figures", "keep_dir",
           "priority_and_offers",
           "namespaces_available", "outcomes", "percentile", "store_query"]

