"""The whole system on loopback: Kamailio, Mosquitto, the service and handler phones.

Used by the demo (``controlroom demo``) and by the end-to-end tests, so both exercise
exactly the same wiring: real Kamailio as registrar and record-routing proxy, real
Mosquitto as the CAD broker, SIPp handler phones registered to Kamailio, and SIPp
callers whose speech is synthesised by espeak-ng and sent as G.711 RTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from config import Settings, from_dict
from config.dump import toml_dump
from controlroom.service import Service
from harness import scenarios, speech
from harness.kamailio import Kamailio
from harness.mosquitto import Mosquitto
from harness.ports import free_rtp_range, free_tcp_port, free_udp_port
from harness.sipp import Sipp

DOMAIN = "controlroom.local"


@dataclass
class StackOptions:
    """How the loopback system is put together."""

    handlers: int = 3
    """SIPp handler phones h1..hN (all with skills 999 and 101)."""
    engine: str = "whisper"
    """Transcription engine: whisper (bundled tiny.en), vosk or none."""
    model: str = ""
    web_port: int = 0
    """Console port (0: a free one)."""
    ring_ms: int = 800
    """How long handler phones ring before answering."""
    handlers_available: bool = True
    """Log handlers in as available at start."""
    offer_timeout: float = 10.0
    wrapup: float = 2.0
    phone_timeout: float = 3600.0
    """Handler phones exit after this long (SIPp's global timeout)."""
    codec: str = "PCMA"
    ring_ms_by_handler: dict[str, int] = field(default_factory=dict)
    """Per-handler ring time (a long one makes a phone nobody answers)."""
    line_101: dict[str, Any] = field(default_factory=dict)
    """Extra settings for the 101 line (e.g. ``max_queue``, ``overflow``)."""
    handler_text: str = "Police. What is your emergency? Tell me exactly where you are."
    web: dict[str, Any] = field(default_factory=dict)
    """Extra settings for the console (e.g. ``live_queue``)."""
    storage: dict[str, Any] = field(default_factory=dict)
    """Extra storage settings (e.g. ``database`` on a file system of its own)."""
    consult_numbers: dict[str, str] = field(default_factory=dict)
    """Agencies a handler may consult (name -> SIP URI through Kamailio)."""
    handler_pcm: Any = None
    """16-bit 8 kHz PCM (numpy) the handler phones play instead of ``handler_text``."""
    engine_workers: int = 1
    """``sip.engine_workers``: with 2 or more, the engines run in child processes on
    consecutive SIP ports and Kamailio dispatches INVITEs over them (UDP only here)."""
    transport: str = "udp"
    """SIP between Kamailio and the service, both ways: ``udp``, ``tcp`` or ``tls``
    (certificates from a throw-away CA in ``<workdir>/tls``); SIPp callers then reach
    Kamailio over TCP (this SIPp has no TLS), handler phones stay on UDP."""


class Stack:
    """Async context manager: everything up on enter, everything down on exit."""

    def __init__(self, workdir: Path, options: StackOptions | None = None) -> None:
        self.workdir = Path(workdir)
        self.options = options or StackOptions()
        self._exit = contextlib.ExitStack()
        self.kamailio: Kamailio
        self.mosquitto: Mosquitto
        self.service: Service
        self.phones: dict[str, Sipp] = {}
        self.config_path = self.workdir / "controlroom.toml"
        self._calls = 0

    # ------------------------------------------------------------------ config
    def config(self, *, sip_port: int, kamailio_port: int, mqtt_port: int,
               web_port: int) -> dict[str, Any]:
        o = self.options
        # No leases for the RTP pool: the media layer skips a port that is busy, so a
        # random block above the harness's leased range is enough.
        base = random.randrange(33000, 60000, 2)
        rtp = (base, base + 399)
        sip: dict[str, Any] = {}
        if o.transport == "tcp":
            sip = {"tcp": True, "proxy": f"sip:127.0.0.1:{kamailio_port};transport=tcp"}
        elif o.transport == "tls":
            sip = {"tcp": True, "tls": True, "tls_port": self.tls_port,
                   "tls_cert": str(self.certs.cert), "tls_key": str(self.certs.key),
                   "tls_ca": str(self.ca.cert),
                   "proxy": f"sip:127.0.0.1:{self.kamailio.tls_port};transport=tls"}
        return {
            "drain_timeout": 5.0,
            "consult_numbers": dict(o.consult_numbers),
            "sip": {"bind": "127.0.0.1", "port": sip_port, "domain": DOMAIN,
                    "proxy": f"sip:127.0.0.1:{kamailio_port}", "rtp_bind": "127.0.0.1",
                    "rtp_port_min": rtp[0], "rtp_port_max": rtp[1],
                    "dead_call_timeout": 60.0, "engine_workers": o.engine_workers, **sip},
            "lines": [
                {"name": "999", "numbers": ["999", "112"], "priority": 0, "skill": "999",
                 "trusted_sources": ["127.0.0.1"], "answer_threshold": 10.0,
                 "wrapup": o.wrapup, "callback_on_abandon": True},
                {"name": "101", "numbers": ["101"], "priority": 1, "skill": "101",
                 "trusted_sources": ["127.0.0.1"], "answer_threshold": 60.0,
                 "wrapup": o.wrapup, "ageing_per_minute": 0.1, **o.line_101},
            ],
            "handlers": [{"id": f"h{i}", "name": f"Handler {i}",
                          "phone": f"sip:h{i}@{DOMAIN}", "skills": ["999", "101"]}
                         for i in range(1, o.handlers + 1)],
            "routing": {"offer_timeout": o.offer_timeout,
                        "handlers_start_available": o.handlers_available},
            "storage": {"data_dir": str(self.workdir / "data"), **o.storage},
            "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "node": "fcr1"},
            "transcription": {"engine": o.engine, "model": o.model, "live": o.engine != "none"},
            "web": {"bind": "127.0.0.1", "port": web_port, **o.web},
            "logging": {"level": "info"},
        }

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Stack:
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for sub in ("clips", "kamailio", "callers", *(f"phone-h{i}" for i in range(1, self.options.handlers + 1))):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.mosquitto = self._exit.enter_context(Mosquitto())
        workers = self.options.engine_workers
        if workers > 1 and self.options.transport != "udp":
            raise ValueError("StackOptions.engine_workers > 1 is supported over UDP only")
        sip_port = free_rtp_range(workers)[0] if workers > 1 else free_udp_port()
        routes = {n: f"127.0.0.1:{sip_port}" for n in ("999", "112", "101")}
        dispatch = [f"127.0.0.1:{sip_port + i}" for i in range(workers)] if workers > 1 else []
        if dispatch:
            # The dispatcher routes these numbers (OPTIONS-probed, with failover). A
            # worker may take 5 s to say 100 Trying before its INVITE goes to the other
            # (the cluster's 500 ms gave callers 408s on a loaded two-core machine).
            routes = {}
        tls = None
        if self.options.transport == "tcp":
            routes = {n: f"{t};transport=tcp" for n, t in routes.items()}
        elif self.options.transport == "tls":
            from harness.certs import CertAuthority

            self.ca = CertAuthority(self.workdir / "tls")
            self.certs = self.ca.issue("controlroom", "controlroom.local")
            kam = self.ca.issue("kamailio", "kamailio.local")
            tls = (kam.cert, kam.key, self.ca.cert)
            self.tls_port = free_tcp_port()
            routes = {n: f"127.0.0.1:{self.tls_port};transport=tls" for n in routes}
        self.kamailio = await asyncio.to_thread(
            lambda: self._exit.enter_context(Kamailio(routes, domain=DOMAIN, trace=False,
                                                       workdir=self.workdir / "kamailio",
                                                       tcp=self.options.transport != "udp",
                                                       tls=tls, dispatch=dispatch,
                                                       dispatch_fr_ms=5000)))
        web_port = self.options.web_port or free_tcp_port()
        data = self.config(sip_port=sip_port, kamailio_port=self.kamailio.port,
                           mqtt_port=self.mosquitto.port, web_port=web_port)
        self.config_path.write_text(toml_dump(data))
        self.settings: Settings = from_dict(data)
        self.service = Service(self.settings)
        await self.service.start()
        if self.options.handler_pcm is not None:
            self.handler_clip = handler_clip = self.pcm_clip(self.options.handler_pcm,
                                                             name="handler")
        else:
            self.handler_clip = handler_clip = await asyncio.to_thread(
                self.clip, self.options.handler_text, voice="en-gb+f3", lead_s=0.5,
                name="handler")
        for h in self.settings.handlers:
            ring = self.options.ring_ms_by_handler.get(h.id, self.options.ring_ms)
            phone = Sipp(scenarios.handler(user=h.id, ring_ms=ring, pcap=handler_clip.pcap,
                                           hangup="remote", expect_cancel=ring > 30000),
                         calls=100000, timeout=self.options.phone_timeout, name=f"phone-{h.id}",
                         trace_msg=False, workdir=self.workdir / f"phone-{h.id}")
            await asyncio.to_thread(self._exit.enter_context, phone)
            await asyncio.to_thread(self.kamailio.register, h.id, phone.contact(h.id))
            self.phones[h.id] = phone

    async def __aexit__(self, *exc: object) -> None:
        await self._stop()

    async def _stop(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            with contextlib.suppress(Exception):
                await service.stop()
        await asyncio.to_thread(self._exit.close)

    # ------------------------------------------------------------------ calls
    def clip(self, text: str, *, voice: str = "en-gb", lead_s: float = 1.5,
             codec: str | None = None, name: str | None = None, speed: int = 150) -> speech.Clip:
        """Speech as an RTP pcap, with ``lead_s`` of silence first (so the handler is
        connected before the caller speaks)."""
        codec = codec or self.options.codec
        self._calls += 1
        pcap = self.workdir / "clips" / f"{name or f'clip{self._calls}'}-{codec}.pcap"
        pcm, _, _ = speech.read_wav(speech.synthesise(text, voice=voice, speed=speed))
        pcm = np.concatenate([np.zeros(int(lead_s * speech.SAMPLE_RATE), dtype=np.int16), pcm,
                              np.zeros(speech.SAMPLE_RATE // 2, dtype=np.int16)])
        packets = speech.audio_packets(pcm, codec)
        speech.write_rtp_pcap(pcap, packets)
        payload = b"".join(p.payload for p in packets)
        return speech.Clip(text=text, codec=codec, pcm=pcm, payload=payload,
                           sent=speech.decode(payload, codec), pcap=pcap, packets=packets)

    def pcm_clip(self, pcm: np.ndarray, *, name: str, codec: str | None = None) -> speech.Clip:
        """Any 8 kHz 16-bit PCM (a test tone) as an RTP pcap SIPp can play."""
        codec = codec or self.options.codec
        pcap = self.workdir / "clips" / f"{name}-{codec}.pcap"
        packets = speech.audio_packets(pcm, codec)
        speech.write_rtp_pcap(pcap, packets)
        payload = b"".join(p.payload for p in packets)
        return speech.Clip(text=name, codec=codec, pcm=pcm, payload=payload,
                           sent=speech.decode(payload, codec), pcap=pcap, packets=packets)

    def call(self, dialled: str, *, caller: str, clip: speech.Clip | None = None,
             talk_s: float | None = None, hangup: str = "caller", display: str = "",
             name: str | None = None, extra_headers: tuple[str, ...] = (),
             expect_status: int = 200) -> Sipp:
        """Start a SIPp caller through Kamailio; the caller hangs up after ``talk_s``."""
        talk = talk_s if talk_s is not None else ((clip.duration + 1.0) if clip else 3.0)
        codecs = (clip.codec,) if clip else (self.options.codec,)
        scen = scenarios.caller(dialled=dialled, codecs=codecs, caller_id=caller,
                                display=display, pcap=clip.pcap if clip else None,
                                talk_ms=int(talk * 1000), hangup=hangup,
                                extra_headers=extra_headers, expect_status=expect_status)
        self._calls += 1
        (self.workdir / "callers" / (name or f"caller{self._calls}")).mkdir(parents=True, exist_ok=True)
        sipp = Sipp(scen, target=self.kamailio.addr, calls=1, timeout=talk + 120,
                    extra_args=["-t", "t1"] if self.options.transport != "udp" else [],
                    name=name or f"caller{self._calls}",
                    workdir=self.workdir / "callers" / (name or f"caller{self._calls}"))
        return sipp.start()
