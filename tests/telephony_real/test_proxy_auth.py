"""Handler legs through a Kamailio that demands digest authentication (407)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from harness import scenarios
from harness.kamailio import Kamailio
from harness.sipp import Sipp
from telephony.api import CallArrived, CallEnded, LegAnswered, LegFailed

from .conftest import DOMAIN, EngineRig

pytestmark = pytest.mark.realparts


@pytest.fixture(scope="module")
def kamailio(engine_port: int) -> Iterator[Kamailio]:
    target = f"127.0.0.1:{engine_port}"
    with Kamailio(routes={"999": target}, domain=DOMAIN,
                  users={"controlroom": "engine-pass", "h8": "phone-pass"}) as k:
        yield k


@pytest.fixture
def engine_credentials() -> tuple[str, str]:
    return ("controlroom", "engine-pass")


async def test_leg_answers_407_with_digest(rig: EngineRig) -> None:
    """The proxy challenges the engine's INVITE to a handler (407); the engine retries with
    credentials and the leg is answered; phones register with digest (401) too."""
    phone = Sipp(scenarios.handler(user="h8", ring_ms=100), name="h8")
    caller = Sipp(scenarios.caller(dialled="999", talk_ms=2500), target=rig.kamailio.addr,
                  name="caller")
    await rig.phone(phone, "h8")  # Kamailio.register answers the 401 with h8's password
    try:
        await rig.sipp(caller)
        arrived = await rig.wait(CallArrived)
        leg = rig.engine.offer(arrived.call_id, rig.aor("h8"), timeout=10)
        await rig.wait(LegAnswered, leg_id=leg)
        assert not rig.of(LegFailed)
        rig.engine.bridge(arrived.call_id, leg)
        assert await rig.finish(caller) == 0, caller.diagnostics()
        await rig.wait(CallEnded, call_id=arrived.call_id)
        assert await rig.finish(phone, 10) == 0, phone.diagnostics()
        assert "Proxy-Authorization: Digest" in phone.messages_text(10**6)
    finally:
        await asyncio.to_thread(caller.stop)
        await asyncio.to_thread(phone.stop)
