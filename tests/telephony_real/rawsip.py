"""A tiny asyncio SIP UAC over UDP for conformance cases SIPp cannot time exactly.

Used for: the same INVITE sent three times (retransmission), a CANCEL sent right behind
the INVITE (racing the engine's immediate 200), and malformed requests. It never blocks
the event loop (the engine under test runs on the same loop).
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field


@dataclass
class Msg:
    """A parsed SIP message (enough for assertions)."""

    first: str
    headers: list[tuple[str, str]]
    body: bytes
    source: tuple[str, int] = ("", 0)

    @property
    def status(self) -> int | None:
        parts = self.first.split(" ", 2)
        return int(parts[1]) if parts[0] == "SIP/2.0" and len(parts) > 1 else None

    @property
    def method(self) -> str | None:
        return None if self.first.startswith("SIP/2.0") else self.first.split(" ", 1)[0]

    def get(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def cseq_method(self) -> str:
        return (self.get("CSeq") or " ").split()[-1]

    @property
    def to_tag(self) -> str | None:
        to = self.get("To") or ""
        for p in to.split(";")[1:]:
            if p.strip().startswith("tag="):
                return p.strip()[4:]
        return None


def parse(data: bytes, source: tuple[str, int] = ("", 0)) -> Msg:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    headers = []
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers.append((k.strip(), v.strip()))
    return Msg(first=lines[0], headers=headers, body=body, source=source)


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue[Msg]) -> None:
        self.queue = queue

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait(parse(data, addr))


@dataclass
class RawUac:
    """One dialog's worth of hand-built requests to ``target``."""

    target: tuple[str, int]
    dialled: str = "999"
    caller: str = "07700900999"
    codecs: tuple[int, ...] = (8,)
    rtp_port: int = 40000
    call_id: str = field(default_factory=lambda: f"raw-{secrets.token_hex(6)}@127.0.0.1")
    from_tag: str = field(default_factory=lambda: secrets.token_hex(4))
    branch: str = field(default_factory=lambda: f"z9hG4bK-raw-{secrets.token_hex(5)}")
    port: int = 0
    bind: str = "127.0.0.1"
    """Local address to send from (another loopback address plays an untrusted host)."""

    async def open(self) -> RawUac:
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Msg] = asyncio.Queue()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: _Proto(self.queue), local_addr=(self.bind, 0))
        self.port = self.transport.get_extra_info("sockname")[1]
        return self

    def close(self) -> None:
        self.transport.close()

    def send(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        self.transport.sendto(data, self.target)

    async def recv(self, within: float = 2.0) -> Msg | None:
        try:
            return await asyncio.wait_for(self.queue.get(), within)
        except TimeoutError:
            return None

    async def collect(self, seconds: float) -> list[Msg]:
        """Every message received within ``seconds``."""
        out: list[Msg] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            m = await self.recv(left)
            if m is not None:
                out.append(m)
        return out

    # --- requests ----------------------------------------------------------------------

    @property
    def ruri(self) -> str:
        return f"sip:{self.dialled}@{self.target[0]}:{self.target[1]}"

    def _via(self, branch: str) -> str:
        return f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport"

    def _from(self) -> str:
        return f"From: <sip:{self.caller}@127.0.0.1:{self.port}>;tag={self.from_tag}"

    def sdp(self) -> str:
        rtpmap = {0: "PCMU/8000", 8: "PCMA/8000", 18: "G729/8000"}
        return ("v=0\r\no=raw 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                f"m=audio {self.rtp_port} RTP/AVP {' '.join(map(str, self.codecs))}\r\n"
                + "".join(f"a=rtpmap:{pt} {rtpmap[pt]}\r\n" for pt in self.codecs))

    def invite(self) -> str:
        body = self.sdp()
        return (f"INVITE {self.ruri} SIP/2.0\r\n{self._via(self.branch)}\r\nMax-Forwards: 70\r\n"
                f"{self._from()}\r\nTo: <{self.ruri}>\r\nCall-ID: {self.call_id}\r\n"
                f"CSeq: 1 INVITE\r\nContact: <sip:{self.caller}@127.0.0.1:{self.port}>\r\n"
                f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}")

    def cancel(self) -> str:
        return (f"CANCEL {self.ruri} SIP/2.0\r\n{self._via(self.branch)}\r\nMax-Forwards: 70\r\n"
                f"{self._from()}\r\nTo: <{self.ruri}>\r\nCall-ID: {self.call_id}\r\n"
                f"CSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n")

    def ack(self, final: Msg) -> str:
        """ACK for a final response: same branch for non-2xx, a new one (to Contact) for 2xx."""
        to = final.get("To")
        if final.status is not None and 200 <= final.status < 300:
            contact = (final.get("Contact") or f"<{self.ruri}>").strip("<>").split(">")[0]
            return (f"ACK {contact} SIP/2.0\r\n{self._via(self.branch + '-ack')}\r\n"
                    f"Max-Forwards: 70\r\n{self._from()}\r\nTo: {to}\r\nCall-ID: {self.call_id}\r\n"
                    f"CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")
        return (f"ACK {self.ruri} SIP/2.0\r\n{self._via(self.branch)}\r\nMax-Forwards: 70\r\n"
                f"{self._from()}\r\nTo: {to}\r\nCall-ID: {self.call_id}\r\n"
                f"CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")

    def bye(self, answer: Msg, cseq: int = 2) -> str:
        contact = (answer.get("Contact") or f"<{self.ruri}>").strip("<>").split(">")[0]
        return (f"BYE {contact} SIP/2.0\r\n{self._via(self.branch + '-bye')}\r\n"
                f"Max-Forwards: 70\r\n{self._from()}\r\nTo: {answer.get('To')}\r\n"
                f"Call-ID: {self.call_id}\r\nCSeq: {cseq} BYE\r\nContent-Length: 0\r\n\r\n")
