"""Raw SIP callers and handler phones on loopback UDP sockets, driven step by step.

For tests that must choose exactly when a caller hangs up or a phone answers, rejects or
lets an offer ring out: the engine and service under test are real, these peers are
plain sockets that speak just enough SIP (no shared code with the engine but the parser).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass, field

from telephony.sip.message import Request, Response, make_response, parse
from tests.sip.peer import Peer, in_dialog, invite, sdp_offer

ANSWER_SDP = sdp_offer(port=41000, codecs="8 0 101")


@dataclass
class Offer:
    """An INVITE a handler phone received and has not finished with."""

    invite: Request
    addr: tuple[str, int]
    tag: str
    state: str = "ringing"  # ringing | answered | rejected | cancelled | ended


@dataclass
class HandlerPhone:
    """A phone that rings on INVITE and answers, rejects or ignores when told to."""

    handler_id: str
    peer: Peer = field(default_factory=Peer)
    offers: dict[str, Offer] = field(default_factory=dict)
    """By SIP Call-ID, in arrival order."""
    cancels: int = 0
    byes_received: int = 0
    _task: asyncio.Task[None] | None = None

    async def start(self) -> HandlerPhone:
        await self.peer.open()
        self._task = asyncio.create_task(self._run())
        return self

    @property
    def uri(self) -> str:
        return f"sip:{self.handler_id}@127.0.0.1:{self.peer.port}"

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.peer.close()

    def ringing(self) -> list[str]:
        return [cid for cid, o in self.offers.items() if o.state == "ringing"]

    def answered(self) -> list[str]:
        return [cid for cid, o in self.offers.items() if o.state == "answered"]

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.peer.transport is not None
        self.peer.transport.sendto(data, addr)

    async def _run(self) -> None:
        q = self.peer.proto.queue
        while True:
            data, addr = await q.get()
            msg = parse(data)
            if not isinstance(msg, Request):
                continue
            cid = msg.call_id
            if msg.method == "INVITE":
                if cid in self.offers:  # a retransmission
                    continue
                o = self.offers[cid] = Offer(msg, addr, "ph" + secrets.token_hex(4))
                self._send(make_response(msg, 180, to_tag=o.tag).encode(), addr)
            elif msg.method == "CANCEL":
                self._send(make_response(msg, 200).encode(), addr)
                o = self.offers.get(cid)
                if o is not None and o.state == "ringing":
                    o.state = "cancelled"
                    self.cancels += 1
                    self._send(make_response(o.invite, 487, to_tag=o.tag).encode(), o.addr)
            elif msg.method == "BYE":
                self._send(make_response(msg, 200).encode(), addr)
                o = self.offers.get(cid)
                if o is not None and o.state == "answered":
                    o.state = "ended"
                    self.byes_received += 1
            elif msg.method in ("INFO", "OPTIONS", "UPDATE"):
                self._send(make_response(msg, 200).encode(), addr)

    def answer(self, cid: str) -> None:
        o = self.offers[cid]
        headers = [("Contact", f"<sip:{self.handler_id}@127.0.0.1:{self.peer.port}>")]
        self._send(make_response(o.invite, 200, to_tag=o.tag, headers=headers,
                                 body=ANSWER_SDP.encode()).encode(), o.addr)
        o.state = "answered"

    def reject(self, cid: str) -> None:
        o = self.offers[cid]
        self._send(make_response(o.invite, 603, to_tag=o.tag).encode(), o.addr)
        o.state = "rejected"

    def hangup(self, cid: str) -> None:
        """BYE from the handler's side of an answered offer."""
        o = self.offers[cid]
        inv = o.invite
        contact = inv.contact
        target = contact.uri if contact is not None else f"sip:engine@{o.addr[0]}:{o.addr[1]}"
        text = (f"BYE {target} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.peer.port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
                f"Max-Forwards: 70\r\n"
                f"From: {inv.get('To')};tag={o.tag}\r\n"
                f"To: {inv.get('From')}\r\nCall-ID: {inv.call_id}\r\nCSeq: 1 BYE\r\n"
                f"Content-Length: 0\r\n\r\n")
        self._send(text.encode(), o.addr)
        o.state = "ended"


@dataclass
class Caller:
    """A caller whose INVITE the engine answers; hangs up (BYE) when told to."""

    engine_port: int
    number: str = "999"
    peer: Peer = field(default_factory=Peer)
    ok: Response | None = None
    byes_received: int = 0
    _task: asyncio.Task[None] | None = None

    async def dial(self) -> str:
        """INVITE, wait for 200 OK, ACK; returns the SIP Call-ID."""
        await self.peer.open()
        text, call_id, _ = invite(self.peer, self.engine_port, number=self.number)
        self.peer.send(text, self.engine_port)
        self.ok = await self.peer.expect_status(200, timeout=5.0)
        self.peer.send(in_dialog("ACK", self.peer, self.engine_port, self.ok, cseq=1),
                       self.engine_port)
        self._task = asyncio.create_task(self._run())
        return call_id

    async def _run(self) -> None:
        q = self.peer.proto.queue
        while True:
            data, addr = await q.get()
            msg = parse(data)
            if isinstance(msg, Request) and msg.method == "BYE":
                self.byes_received += 1
                assert self.peer.transport is not None
                self.peer.transport.sendto(make_response(msg, 200).encode(), addr)

    def hangup(self) -> None:
        assert self.ok is not None
        self.peer.send(in_dialog("BYE", self.peer, self.engine_port, self.ok, cseq=2),
                       self.engine_port)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.peer.close()
