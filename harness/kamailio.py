"""A real Kamailio SIP proxy + registrar on loopback, for tests, the demo and benchmarks.

``Kamailio(routes={"999": "127.0.0.1:5080"})`` writes a ``kamailio.cfg`` into a temp
directory and runs ``kamailio -DD -E -f cfg`` in the foreground (no daemon), logging to
a file in that directory. It is:

* a registrar (usrloc in memory, ``db_mode=0``) for handler phones, no authentication;
* a record-routing stateful proxy: initial INVITEs are record-routed, in-dialog requests
  follow the Route set (loose routing), everything is relayed with ``t_relay``;
* a number router: an initial request whose request-URI user is a key of ``routes`` is
  sent to that ``host:port`` (``$du``; the request-URI is kept so the service sees the
  dialled number); other users are looked up in the location table; unknown -> 404.

* a dispatcher in front of a cluster (``dispatch=["10.0.0.11:5060", ...]``): initial
  INVITEs to ``dispatch_numbers`` go to one node of the list (``ds_select_dst``,
  round-robin), each node is probed with OPTIONS every ``probe_interval`` s (one
  failed probe marks it inactive, one answered probe active again), and a node that
  does not answer the INVITE within ``dispatch_fr_ms`` (no provisional at all) or
  ``dispatch_fr_inv_ms`` (a provisional, no final) is marked inactive and the INVITE
  goes on to the next node (``failure_route``, ``ds_next_dst``); a 500/503 (a live
  node shedding load) moves the INVITE on without marking the node; with no node
  active every node is still tried: a caller never sees a dead node. In-dialog requests follow the Record-Route to the
  node that answered (media stays where the call is).

It answers ``OPTIONS`` to itself with 200, which is how :meth:`Kamailio.start` knows it
is ready. The context manager always stops the process group, even on failure.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from .ports import HOST, free_tcp_port, free_udp_port, release

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"


class HarnessError(RuntimeError):
    """A real peer could not be started or misbehaved; the message carries its log."""


class Process:
    """A child process in its own session with stdout+stderr captured to a log file."""

    def __init__(self, argv: Sequence[str], *, log_path: Path, cwd: Path | None = None,
                 env: Mapping[str, str] | None = None, stdin: int | None = subprocess.DEVNULL):
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=stdin,
            cwd=cwd, env=dict(env) if env is not None else None,
            start_new_session=True,  # own process group: stop() reaches forked children
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 5.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal the whole process group, then SIGKILL it if it lingers; idempotent."""
        try:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    self.proc.wait(5)
            else:
                # The leader exited; children it forked may still hold ports.
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        finally:
            if not self._log.closed:
                self._log.close()
        return self.proc.returncode

    def log_text(self, tail: int = 20000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-tail:].decode("utf-8", "replace")


def sip_options(addr: tuple[str, int], *, timeout: float = 0.5, user: str = "") -> int | None:
    """Send one OPTIONS to ``addr`` and return the response status, or None on timeout."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((HOST, 0))
        s.settimeout(timeout)
        lport = s.getsockname()[1]
        tag = random.randrange(1 << 30)
        ruri = f"sip:{user + '@' if user else ''}{addr[0]}:{addr[1]}"
        msg = (
            f"OPTIONS {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{lport};branch=z9hG4bK{tag:x};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:probe@{HOST}>;tag={tag:x}\r\n"
            f"To: <{ruri}>\r\n"
            f"Call-ID: probe-{tag:x}@{HOST}\r\n"
            f"CSeq: 1 OPTIONS\r\n"
            f"Content-Length: 0\r\n\r\n"
        )
        s.sendto(msg.encode(), addr)
        data, _ = s.recvfrom(65535)
        first = data.split(b"\r\n", 1)[0].split()
        return int(first[1]) if len(first) >= 2 and first[0] == b"SIP/2.0" else None
    except (TimeoutError, OSError, ValueError):
        return None
    finally:
        s.close()


def _digest(challenge: str, *, method: str, uri: str, user: str, password: str) -> str:
    """An RFC 2617 ``Authorization`` value (MD5, with or without qop=auth)."""
    import hashlib
    import re

    params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
    realm, nonce = params.get("realm", ""), params.get("nonce", "")

    def md5(x: str) -> str:
        return hashlib.md5(x.encode()).hexdigest()  # noqa: S324 - SIP digest is MD5

    ha1, ha2 = md5(f"{user}:{realm}:{password}"), md5(f"{method}:{uri}")
    value = (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
             f'algorithm=MD5')
    if "auth" in params.get("qop", "").split(","):
        cnonce, nc = f"{random.randrange(1 << 32):08x}", "00000001"
        resp = md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        value += f', qop=auth, nc={nc}, cnonce="{cnonce}"'
    else:
        resp = md5(f"{ha1}:{nonce}:{ha2}")
    if "opaque" in params:
        value += f', opaque="{params["opaque"]}"'
    return value + f', response="{resp}"'


def sip_register(registrar: tuple[str, int], user: str, contact: str, *, domain: str,
                 expires: int = 3600, timeout: float = 2.0, password: str | None = None) -> int:
    """REGISTER ``sip:user@domain`` with ``contact`` at ``registrar``; returns the status.

    Used to register SIPp handler phones (whose scenarios only answer) from Python.
    ``expires=0`` unregisters. With ``password``, a 401 challenge is answered once.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((HOST, 0))
        lport = s.getsockname()[1]
        tag = random.randrange(1 << 30)
        auth = ""
        for cseq in (1, 2):
            msg = (
                f"REGISTER sip:{domain} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {HOST}:{lport};branch=z9hG4bK{tag:x}-{cseq};rport\r\n"
                f"Max-Forwards: 70\r\n"
                f"From: <sip:{user}@{domain}>;tag={tag:x}\r\n"
                f"To: <sip:{user}@{domain}>\r\n"
                f"Call-ID: reg-{tag:x}@{HOST}\r\n"
                f"CSeq: {cseq} REGISTER\r\n"
                f"Contact: <{contact}>\r\n"
                f"Expires: {expires}\r\n{auth}"
                f"Content-Length: 0\r\n\r\n"
            )
            s.sendto(msg.encode(), registrar)
            deadline = time.monotonic() + timeout
            while True:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                data, _ = s.recvfrom(65535)
                status = int(data.split(b"\r\n", 1)[0].split()[1])
                if status >= 200:
                    break
            if status != 401 or password is None or cseq == 2:
                return status
            challenge = next((line.split(":", 1)[1].strip() for line in
                              data.decode("utf-8", "replace").split("\r\n")
                              if line.lower().startswith("www-authenticate:")), "")
            auth = "Authorization: " + _digest(challenge, method="REGISTER", uri=f"sip:{domain}",
                                               user=user, password=password) + "\r\n"
        return status
    finally:
        s.close()


_CFG = """#!KAMAILIO
# Generated by harness/kamailio.py for loopback tests. Do not use in production.
debug={debug}
log_stderror=yes
log_prefix="{{$mt $hdr(CSeq) $ci}} "
fork=yes
children={children}
disable_tcp=yes
auto_aliases=no
listen=udp:{host}:{port}
alias="{domain}"
alias="{host}:{port}"
dns=no
rev_dns=no
use_dns_cache=no
mhomed=0
server_header="Server: kamailio-harness"
user_agent_header="User-Agent: kamailio-harness"

loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "sanity.so"
{auth_modules}
{dispatcher_modules}

modparam("usrloc", "db_mode", 0)
modparam("registrar", "max_expires", 7200)
modparam("rr", "enable_full_lr", 1)
modparam("rr", "append_fromtag", 0)
modparam("tm", "fr_timer", {fr_timer})
modparam("tm", "fr_inv_timer", {fr_inv_timer})

request_route {{
    {trace}
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (!sanity_check("17895", "7")) {{
        xlog("L_WARN", "malformed request from $si:$sp\\n");
        exit;
    }}
    if (is_method("OPTIONS") && uri == myself && $rU == $null) {{
        sl_send_reply("200", "Keepalive");
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{
            route(RELAY);
            exit;
        }}
        if (is_method("ACK")) {{
            if (t_check_trans()) {{
                route(RELAY);
            }} else if (uri != myself) {{
                route(RELAY);
            }}
            exit;
        }}
        # A dialog whose UA ignored Record-Route (pyVoIP does) still reaches its Contact.
        if (uri != myself) {{
            route(RELAY);
        }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            route(RELAY);
        }}
        exit;
    }}
    if (!is_method("ACK")) {{
        if (t_precheck_trans()) {{
            t_check_trans();
            exit;
        }}
        t_check_trans();
    }}
    remove_hf("Route");
{auth}
    if (is_method("INVITE|SUBSCRIBE|REFER")) {{
        record_route();
    }}
    if (is_method("REGISTER")) {{
        if (!save("location")) {{
            sl_reply_error();
        }}
        exit;
    }}
    if ($rU == $null) {{
        sl_send_reply("484", "Address Incomplete");
        exit;
    }}
{routes}
    if (!lookup("location")) {{
        sl_send_reply("404", "Not Found");
        exit;
    }}
    route(RELAY);
}}

route[RELAY] {{
    if (!t_relay()) {{
        sl_reply_error();
    }}
    exit;
}}{dispatcher_routes}"""


DISPATCHER_MODULES = """\
loadmodule "dispatcher.so"
modparam("dispatcher", "list_file", "{list_file}")
modparam("dispatcher", "flags", 2)
modparam("dispatcher", "ds_ping_method", "OPTIONS")
modparam("dispatcher", "ds_ping_from", "sip:dispatcher@{domain}")
modparam("dispatcher", "ds_ping_interval", {probe_interval})
modparam("dispatcher", "ds_probing_mode", 3)
modparam("dispatcher", "ds_probing_threshold", 1)
modparam("dispatcher", "ds_inactive_threshold", 1)
modparam("dispatcher", "ds_ping_reply_codes", "class=2")
"""
"""Dispatcher parameters: failover on (``flags`` 2: the other nodes are kept for
``ds_next_dst``). Set 1 holds the nodes with the probing flag (8): each is probed with
OPTIONS every ``probe_interval`` s, active ones too; one unanswered probe marks it
inactive, one 2xx active again (a probe's own timeout is tm's ``fr_timer``). Probing
mode 3 keeps the flag through every result; mode 0 cleared it, so a node that missed one
probe (at start, or a cable cut) was never probed again and stayed out for good. Set 2
holds the same nodes unprobed and never marked: the last resort when set 1 has no
active node (see :data:`DISPATCHER_ROUTES`)."""

DISPATCHER_ROUTES = """
# An initial INVITE to an emergency or non-emergency number: one node of set 1,
# round-robin among the active ones (the others stay listed for failover). When none
# is active (probes lost, or every node slow at once) set 2 - the same nodes, never
# marked - is tried in turn: a call is never refused while a node may be alive.
route[DISPATCH] {{
    $avp(ds_last_resort) = 0;
    if (!ds_select_dst("1", "4")) {{
        xlog("L_WARN", "no controlroom node active for $rU from $si: trying every node\n");
        $avp(ds_last_resort) = 1;
        if (!ds_select_dst("2", "4")) {{
            send_reply("503", "No Node Available");
            exit;
        }}
    }}
    route(DISPATCH_RELAY);
}}

route[DISPATCH_RELAY] {{
    # No reply at all within {fr_ms} ms (a node answers 100 Trying at once): the node is
    # dead or cut off; a provisional but no final within {fr_inv_ms} ms: it died mid-call.
    t_set_fr({fr_inv_ms}, {fr_ms});
    t_on_failure("DISPATCH_FAILED");
    if (!t_relay()) {{
        sl_reply_error();
    }}
    exit;
}}

failure_route[DISPATCH_FAILED] {{
    if (t_is_canceled()) {{
        exit;
    }}
    if (t_branch_timeout() || t_check_status("500|503")) {{
        if (t_branch_timeout() && $avp(ds_last_resort) == 0) {{
            # silent: inactive (+ still probed); its next answered OPTIONS revives it.
            # A 500/503 comes from a live node that refused this one call (overload
            # shedding, draining): try the next, but leave the node in service.
            xlog("L_WARN", "node $du silent for $ci: marked inactive\n");
            ds_mark_dst("ip");
        }}
        if (ds_next_dst()) {{
            xlog("L_WARN", "retrying $ci ($T_reply_code from the last node) on $du\n");
            t_set_fr({fr_inv_ms}, {fr_ms});
            t_on_failure("DISPATCH_FAILED");
            t_relay();
        }}
    }}
}}

# A node's state as the probes (or a silent INVITE) change it: one line each way, so an
# operator (and a test) sees when a node left and came back into the rotation.
event_route[dispatcher:dst-down] {{
    xlog("L_WARN", "dispatcher: node $ru down\n");
}}

event_route[dispatcher:dst-up] {{
    xlog("L_WARN", "dispatcher: node $ru up\n");
}}
"""
"""Round-robin over the active nodes; a node that does not answer in time is marked
inactive and the INVITE goes to the next; a 500/503 only moves the INVITE on."""


def dispatcher_list(nodes: Sequence[str]) -> str:
    """The ``dispatcher.list`` text: every node ``host:port`` in set 1 (probed: flags 8)
    and again in set 2 (the unprobed last resort)."""
    out = ["# setid destination flags priority (generated)",
           "# set 1: the nodes, probed with OPTIONS (flags 8); set 2: the same, never"
           " marked (last resort)"]
    for node in nodes:
        if not node or any(c in node for c in ' "\n'):
            raise ValueError(f"bad node address {node!r}")
        out.append(f"1 sip:{node} 8 0")
    out += [f"2 sip:{node} 0 0" for node in nodes]
    return "\n".join(out) + "\n"


class Kamailio:
    """A running Kamailio proxy/registrar on ``127.0.0.1:<free port>``.

    Args:
        routes: dialled number (request-URI user) -> ``host:port`` it is relayed to, or a
            list of them (calls spread over the workers by a hash of the Call-ID).
        domain: SIP domain handler phones register in (also an alias of the proxy).
        port: UDP port (0: a free one).
        children: UDP worker processes (raise for load tests).
        trace: log every request (method, R-URI, source) - handy when a test fails.
        fr_inv_timer: ms a relayed INVITE may ring without a final answer (408 after).
        users: ``{user: password}``: when given, REGISTERs need digest auth (401) and every
            other initial request needs proxy auth (407) as one of these users, except
            INVITEs to routed numbers (trunk calls from the network are not challenged).
        host: the address to listen on (a bridge address when the nodes live in network
            namespaces).
        dispatch: cluster nodes (``host:port``): INVITEs to ``dispatch_numbers`` are
            dispatched over them (see the module docstring).
        probe_interval: seconds between OPTIONS probes of each node.
        dispatch_fr_ms / dispatch_fr_inv_ms: how long a node may stay silent (no reply at
            all) / ring without a final answer before the INVITE goes to the next node.
        fr_timer: ms a relayed non-INVITE (BYE, OPTIONS probe) may go unanswered.
        tcp: also listen for SIP over TCP on ``port``.
        tls: ``(cert, key, ca)`` PEM paths: also listen for SIP over TLS on ``tls_port``
            (Debian ``kamailio-tls-modules``), TLS 1.2+; as a client (relaying to a TLS
            next hop) it checks the peer's chain against ``ca`` and presents ``cert``.
        tls_port: TLS port (0: a free one).
    """

    def __init__(self, routes: Mapping[str, str | Sequence[str]] | None = None, *,
                 domain: str = "controlroom.local", port: int = 0, children: int = 2,
                 trace: bool = True, debug: int = 2, fr_inv_timer: int = 120000,
                 workdir: Path | None = None,
                 users: Mapping[str, str] | None = None, host: str = HOST,
                 dispatch: Sequence[str] = (),
                 dispatch_numbers: Sequence[str] = ("999", "112", "101"),
                 probe_interval: int = 1, dispatch_fr_ms: int = 500,
                 dispatch_fr_inv_ms: int = 5000, fr_timer: int | None = None,
                 tcp: bool = False, tls: tuple[Path, Path, Path] | None = None,
                 tls_port: int = 0) -> None:
        self.tcp = tcp or tls is not None
        self.tls = tls
        self.tls_port = (tls_port or free_tcp_port()) if tls is not None else 0
        self.dispatch = list(dispatch)
        self.dispatch_numbers = list(dispatch_numbers) if self.dispatch else []
        self.probe_interval = probe_interval
        self.dispatch_fr_ms = dispatch_fr_ms
        self.dispatch_fr_inv_ms = dispatch_fr_inv_ms
        # A dead node must not hold a BYE or a probe for long: the default is shorter
        # with a cluster behind.
        self.fr_timer = fr_timer if fr_timer is not None else (1500 if self.dispatch else 5000)
        self.routes = dict(routes or {})
        self.users = dict(users or {})
        self.domain = domain
        self.port = port or free_udp_port()
        self.host = host
        self.children = children
        self.trace = trace
        self.debug = debug
        self.fr_inv_timer = fr_inv_timer
        self._own_dir = workdir is None
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="kamailio-"))
        self.cfg_path = self.dir / "kamailio.cfg"
        self.log_path = self.dir / "kamailio.log"
        self.list_path = self.dir / "dispatcher.list"
        self._proc: Process | None = None

    @property
    def addr(self) -> tuple[str, int]:
        """``(host, port)`` of the proxy."""
        return (self.host, self.port)

    @property
    def uri(self) -> str:
        """``sip:127.0.0.1:<port>`` - the engine's proxy setting."""
        return f"sip:{self.host}:{self.port}"

    def aor(self, user: str) -> str:
        """``sip:user@domain`` of a phone registered here."""
        return f"sip:{user}@{self.domain}"

    def config_text(self) -> str:
        lines = []
        for number, target in self.routes.items():
            targets = [target] if isinstance(target, str) else list(target)
            if not number.replace("+", "").isalnum() or not targets or \
                    any('"' in t for t in targets):
                raise ValueError(f"bad route {number!r} -> {target!r}")
            if len(targets) == 1:
                pick = f'        $du = "sip:{targets[0]}";\n'
            else:
                # Several service workers: spread calls by a hash of the Call-ID, so every
                # request and retransmission of one call reaches the same worker.
                pick = f'        $var(w) = $(ci{{s.corehash,{len(targets)}}});\n' + "".join(
                    f'        if ($var(w) == {i}) {{ $du = "sip:{t}"; }}\n'
                    for i, t in enumerate(targets))
            lines.append(
                f'    if ($rU == "{number}") {{\n'
                f'{pick}'
                f'        route(RELAY);\n'
                f'    }}'
            )
        for number in self.dispatch_numbers:
            if not number.replace("+", "").isalnum() or number in self.routes:
                raise ValueError(f"bad dispatched number {number!r}")
            lines.append(f'    if ($rU == "{number}" && is_method("INVITE")) {{\n'
                         f'        route(DISPATCH);\n'
                         f'    }}')
        dispatcher_modules = dispatcher_routes = ""
        if self.dispatch:
            dispatcher_list(self.dispatch)  # checks the addresses
            dispatcher_modules = DISPATCHER_MODULES.format(
                list_file=self.list_path, domain=self.domain, probe_interval=self.probe_interval)
            dispatcher_routes = DISPATCHER_ROUTES.format(fr_ms=self.dispatch_fr_ms,
                                                         fr_inv_ms=self.dispatch_fr_inv_ms)
        trace = 'xlog("L_INFO", "REQ $rm $ru from $si:$sp\\n");' if self.trace else ""
        auth, auth_modules = "", ""
        if self.users:
            auth_modules = 'loadmodule "auth.so"'
            pw = []
            for user, password in self.users.items():
                if not user.replace("-", "").replace("_", "").isalnum() or '"' in password:
                    raise ValueError(f"bad credentials for {user!r}")
                pw.append(f'    if ($au == "{user}") {{ $var(pw) = "{password}"; }}')
            routed = " || ".join(f'$rU == "{n}"' for n in [*self.routes,
                                                             *self.dispatch_numbers]) or "0"
            auth = "\n".join([
                '    $var(pw) = "";',
                *pw,
                '    if (is_method("REGISTER")) {',
                '        if ($var(pw) == "" || !pv_www_authenticate("$fd", "$var(pw)", "0")) {',
                '            www_challenge("$fd", "0");',
                '            exit;',
                '        }',
                '        consume_credentials();',
                f'    }} else if (!is_method("ACK|CANCEL") && !(is_method("INVITE") && ({routed}))) {{',
                '        if ($var(pw) == "" || !pv_proxy_authenticate("$fd", "$var(pw)", "0")) {',
                '            proxy_challenge("$fd", "0");',
                '            exit;',
                '        }',
                '        consume_credentials();',
                '    }',
            ])
        return self._streams(_CFG.format(
            debug=self.debug, children=self.children, host=self.host, port=self.port,
            domain=self.domain, routes="\n".join(lines), trace=trace,
            fr_timer=self.fr_timer, fr_inv_timer=self.fr_inv_timer, auth=auth,
            auth_modules=auth_modules, dispatcher_modules=dispatcher_modules,
            dispatcher_routes=dispatcher_routes,
        ))

    def _streams(self, cfg: str) -> str:
        """TCP and TLS listening (issue 16), added to the UDP-only config when asked."""
        if not self.tcp:
            return cfg
        udp = f"listen=udp:{self.host}:{self.port}\n"
        extra = f"listen=tcp:{self.host}:{self.port}\n"
        if self.tls is not None:
            extra += f"listen=tls:{self.host}:{self.tls_port}\nenable_tls=yes\n"
        cfg = cfg.replace("disable_tcp=yes\n", "disable_tcp=no\ntcp_accept_no_cl=no\n")
        cfg = cfg.replace(udp, udp + extra)
        if self.tls is not None:
            cert, key, ca = self.tls
            self.dir.mkdir(parents=True, exist_ok=True)
            tls_cfg = self.dir / "tls.cfg"
            tls_cfg.write_text(
                "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\n"
                f"require_certificate = no\nprivate_key = {key}\ncertificate = {cert}\n"
                f"ca_list = {ca}\n\n"
                "[client:default]\nmethod = TLSv1.2+\nverify_certificate = yes\n"
                f"require_certificate = yes\nprivate_key = {key}\ncertificate = {cert}\n"
                f"ca_list = {ca}\n")
            cfg = cfg.replace('loadmodule "sanity.so"\n',
                              'loadmodule "sanity.so"\nloadmodule "tls.so"\n'
                              f'modparam("tls", "config", "{tls_cfg}")\n')
        return cfg

    def start(self, timeout: float = 10.0) -> Kamailio:
        """Write the config, start Kamailio and wait until it answers OPTIONS."""
        self.cfg_path.write_text(self.config_text())
        if self.dispatch:
            self.list_path.write_text(dispatcher_list(self.dispatch))
        check = subprocess.run([KAMAILIO, "-c", "-f", str(self.cfg_path)],
                               capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise HarnessError(f"kamailio.cfg rejected:\n{check.stdout}\n{check.stderr}")
        self._proc = Process(
            [KAMAILIO, "-DD", "-E", "-f", str(self.cfg_path), "-m", "64", "-M", "8",
             "-Y", str(self.dir), "-P", str(self.dir / "kamailio.pid")],
            log_path=self.log_path, cwd=self.dir,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._proc.alive():
                raise HarnessError(f"kamailio exited with {self._proc.proc.returncode}:\n"
                                   f"{self.log_text()}")
            if sip_options(self.addr, timeout=0.2) == 200:
                return self
        self.stop()
        raise HarnessError(f"kamailio did not answer OPTIONS in {timeout} s:\n{self.log_text()}")

    def register(self, user: str, contact: str, expires: int = 3600) -> None:
        """Register ``contact`` (e.g. ``sip:h1@127.0.0.1:5090``) for ``user``; raise if refused."""
        status = sip_register(self.addr, user, contact, domain=self.domain, expires=expires,
                              password=self.users.get(user))
        if status != 200:
            raise HarnessError(f"REGISTER {user} -> {status}\n{self.log_text()}")

    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            release(self.port)

    def log_text(self, tail: int = 20000) -> str:
        """The tail of Kamailio's log (include it in assertion messages)."""
        try:
            return self.log_path.read_bytes()[-tail:].decode("utf-8", "replace")
        except OSError:
            return ""

    def __enter__(self) -> Kamailio:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        if self._own_dir and et is None and os.environ.get("HARNESS_KEEP_LOGS") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)
