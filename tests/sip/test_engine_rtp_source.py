"""The engine tells media whom to hear: NAT latching only on lines configured behind NAT,
from the INVITE's source address; never on handler legs (fake media)."""

from __future__ import annotations

import pytest

from config.schema import LineSettings
from telephony import api

from .rigs import Rig

NAT_LINES = [LineSettings(name="999", numbers=["999"], priority=0, nat=True),
             LineSettings(name="101", numbers=["101"], priority=1)]


@pytest.mark.parametrize("rig", [{"lines": NAT_LINES}], indirect=True)
async def test_only_a_nat_line_lets_its_stream_latch_to_the_signalling_source(rig: Rig) -> None:
    """A call on the NAT line may latch to the INVITE's source host; one on another line not."""
    await rig.answered_call("999")
    await rig.answered_call("101")
    calls = await rig.wait_for(api.CallArrived, 2)
    nat_stream, plain_stream = rig.media.streams
    assert nat_stream.latch_host == "127.0.0.1" and nat_stream.tag == calls[0].call_id
    assert plain_stream.latch_host is None
