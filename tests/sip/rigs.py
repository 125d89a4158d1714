"""Shared engine test rig: lines, the Rig wrapper and a handler-side reply helper."""

from __future__ import annotations

import asyncio

from config.schema import LineSettings
from telephony.engine import Engine
from telephony.sip.message import Request, Response, make_response

from .fake_media import FakeMedia
from .peer import Peer, in_dialog, invite, sdp_offer

LINES = [
    LineSettings(name="999", numbers=["999", "112"], priority=0),
    LineSettings(name="101", numbers=["101"], priority=1, queue_prompt="silence"),
]


class Rig:
    def __init__(self, engine: Engine, events: list, peer: Peer) -> None:
        self.engine, self.events, self.peer = engine, events, peer

    @property
    def media(self) -> FakeMedia:
        return self.engine._media

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait_for(self, kind: type, n: int = 1, timeout: float = 3.0) -> list:  # noqa: ASYNC109 - test helper deadline
        async def poll() -> None:
            while len(self.of(kind)) < n:  # noqa: ASYNC110 - events land in a plain list
                await asyncio.sleep(0.01)
        await asyncio.wait_for(poll(), timeout)
        return self.of(kind)

    async def answered_call(self, number: str = "999", **kw) -> tuple[Response, str]:
        text, call_id, _ = invite(self.peer, self.engine.sip_port, number=number, **kw)
        self.peer.send(text, self.engine.sip_port)
        ok = await self.peer.expect_status(200)
        self.peer.send(in_dialog("ACK", self.peer, self.engine.sip_port, ok, cseq=1),
                       self.engine.sip_port)
        return ok, call_id


def _reply(peer: Peer, req: Request, status: int, *, tag: str = "h1", body: bytes = b"",
           headers: list[tuple[str, str]] | None = None) -> None:
    hdrs = list(headers or [])
    if 100 < status < 300:
        hdrs.append(("Contact", f"<sip:handler@127.0.0.1:{peer.port}>"))
    resp = make_response(req, status, to_tag=tag, headers=hdrs, body=body)
    assert peer.last_addr is not None
    peer.transport.sendto(resp.encode(), peer.last_addr)


ANSWER = sdp_offer(port=41000, codecs="0 101").encode()


