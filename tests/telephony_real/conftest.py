"""Real peers around the real Engine: Kamailio (proxy/registrar), SIPp callers and handler
phones, baresip; the Engine is started by each test on the test's event loop.

Topology (all 127.0.0.1)::

    SIPp caller --INVITE sip:999@kamailio--> Kamailio --$du--> Engine (lines 999, 101)
    Engine --INVITE sip:hN@controlroom.local via proxy--> Kamailio --location--> handler phone

Blocking harness calls (SIPp waits, process starts) go through ``asyncio.to_thread`` so
the engine's media clock on the same loop never stalls.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from config.schema import LineSettings
from config.telephony import SipSettings
from harness.kamailio import Kamailio
from harness.ports import free_rtp_range, free_udp_port, release
from harness.sipp import Sipp

DOMAIN = "controlroom.local"
E = TypeVar("E")


@pytest.fixture(scope="module")
def engine_port() -> int:
    return free_udp_port()


@pytest.fixture(scope="module")
def kamailio(engine_port: int) -> Iterator[Kamailio]:
    target = f"127.0.0.1:{engine_port}"
    # 888 is routed to the engine but is none of its lines: the engine must say 404.
    with Kamailio(routes={"999": target, "101": target, "888": target}, domain=DOMAIN) as k:
        yield k


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


class EngineRig:
    """The engine under test plus what it reported, with waits that never block the loop."""

    def __init__(self, engine: Any, events: list[Any], kamailio: Kamailio, tmp: Path) -> None:
        self.engine = engine
        self.events = events
        self.kamailio = kamailio
        self.tmp = tmp
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self._changed.set()

    def of(self, kind: type[E], **match: Any) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)
                and all(getattr(e, k) == v for k, v in match.items())]

    async def wait(self, kind: type[E], within: float = 10.0, **match: Any) -> E:
        """The first event of ``kind`` whose fields equal ``match`` (waits up to ``within`` s)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + within
        while True:
            found = self.of(kind, **match)
            if found:
                return found[0]
            left = end - loop.time()
            if left <= 0:
                raise AssertionError(
                    f"no {kind.__name__} {match} within {within} s; events: {self.events}\n"
                    f"--- kamailio:\n{self.kamailio.log_text(6000)}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass

    async def sipp(self, sipp: Sipp) -> Sipp:
        """Start a SIPp off the loop."""
        await asyncio.to_thread(sipp.start)
        return sipp

    async def finish(self, sipp: Sipp, within: float = 30.0) -> int:
        """Wait for SIPp to finish off the loop; returns its exit code."""
        return await asyncio.to_thread(sipp.wait, within)

    async def phone(self, sipp: Sipp, user: str) -> Sipp:
        """Start a handler phone and register it at Kamailio as ``sip:user@domain``."""
        await self.sipp(sipp)
        await asyncio.to_thread(self.kamailio.register, user, sipp.contact(user))
        return sipp

    def aor(self, user: str) -> str:
        return f"sip:{user}@{DOMAIN}"


def lines() -> list[LineSettings]:
    return [LineSettings(name="999", numbers=["999"], priority=0, trusted_sources=["127.0.0.1"]),
            LineSettings(name="101", numbers=["101"], priority=1, trusted_sources=["127.0.0.1"])]


@pytest.fixture
def engine_lines() -> list[LineSettings]:
    """The engine's lines (override per module, e.g. a line behind NAT)."""
    return lines()


@pytest.fixture
def engine_credentials() -> tuple[str, str] | None:
    """``(username, password)`` the engine answers proxy challenges with (override per module)."""
    return None


@pytest.fixture
async def rig(kamailio: Kamailio, engine_port: int, tmp_path: Path,
              engine_credentials: tuple[str, str] | None,
              engine_lines: list[LineSettings]) -> AsyncIterator[EngineRig]:
    from telephony.engine import Engine

    rtp_min, rtp_max = free_rtp_range(64)
    user, password = engine_credentials or ("", None)
    settings = SipSettings(port=engine_port, domain=DOMAIN, proxy=kamailio.uri,
                           rtp_port_min=rtp_min, rtp_port_max=rtp_max,
                           username=user, password=password)
    events: list[Any] = []
    holder: dict[str, EngineRig] = {}

    def on_event(ev: Any) -> None:
        events.append(ev)
        holder["rig"].notify()

    engine = Engine(settings=settings, lines=engine_lines, recordings_dir=tmp_path / "recordings",
                    on_event=on_event)
    holder["rig"] = EngineRig(engine, events, kamailio, tmp_path)
    (tmp_path / "recordings").mkdir()
    await engine.start()
    try:
        yield holder["rig"]
    finally:
        await engine.stop(drain_timeout=0)
        release(*range(rtp_min, rtp_max + 1))


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


Finder = Callable[..., Any]
