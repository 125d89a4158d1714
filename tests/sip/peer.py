"""A tiny hand-driven SIP peer on 127.0.0.1 for engine tests (raw bytes, no shared code
with the engine except the parser used to read what the engine sends)."""

from __future__ import annotations

import asyncio
import secrets

from telephony.sip.message import Request, Response, parse

SDP_OFFER = (
    "v=0\r\no=peer 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP {fmts}\r\n{attrs}a=sendrecv\r\n"
)


def sdp_offer(port: int = 40000, codecs: str = "8 0 101", direction: str = "sendrecv",
              addr: str = "127.0.0.1") -> str:
    attrs = "".join(
        {"0": "a=rtpmap:0 PCMU/8000\r\n", "8": "a=rtpmap:8 PCMA/8000\r\n",
         "18": "a=rtpmap:18 G729/8000\r\n",
         "101": "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"}[c]
        for c in codecs.split())
    return (SDP_OFFER.format(port=port, fmts=codecs, attrs=attrs)
            .replace("a=sendrecv", f"a={direction}").replace("IN IP4 127.0.0.1\r\nt", f"IN IP4 {addr}\r\nt"))


class _Proto(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait((data, addr))


class Peer:
    """A UDP socket that sends text and parses what comes back."""

    def __init__(self) -> None:
        self.port = 0
        self.transport: asyncio.DatagramTransport | None = None
        self.proto = _Proto()
        self.last_addr: tuple[str, int] | None = None

    async def open(self) -> Peer:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self.proto, local_addr=("127.0.0.1", 0))
        self.port = self.transport.get_extra_info("sockname")[1]
        return self

    def close(self) -> None:
        if self.transport:
            self.transport.close()

    def send(self, data: str | bytes, port: int) -> None:
        assert self.transport is not None
        if isinstance(data, str):
            data = data.replace("\r\n", "\n").replace("\n", "\r\n").encode()
        self.transport.sendto(data, ("127.0.0.1", port))

    async def recv(self, timeout: float = 2.0) -> Request | Response:  # noqa: ASYNC109 - test helper deadline
        data, addr = await asyncio.wait_for(self.proto.queue.get(), timeout)
        self.last_addr = addr
        msg = parse(data)
        assert msg is not None
        return msg

    async def expect_status(self, status: int, timeout: float = 2.0) -> Response:  # noqa: ASYNC109 - test helper deadline
        """Next response with this status (skipping 100 Trying)."""
        while True:
            msg = await self.recv(timeout)
            if isinstance(msg, Response) and msg.status == 100 and status != 100:
                continue
            assert isinstance(msg, Response), f"expected {status}, got request {msg.method}"
            assert msg.status == status, f"expected {status}, got {msg.status} {msg.reason}"
            return msg

    async def expect_request(self, method: str, timeout: float = 2.0) -> Request:  # noqa: ASYNC109 - test helper deadline
        while True:
            msg = await self.recv(timeout)
            if isinstance(msg, Request) and msg.method == method:
                return msg
            assert not isinstance(msg, Request), f"expected {method}, got {msg.method}"

    async def silent(self, timeout: float = 0.3) -> bool:  # noqa: ASYNC109 - test helper deadline
        try:
            await asyncio.wait_for(self.proto.queue.get(), timeout)
        except TimeoutError:
            return True
        return False


def invite(peer: Peer, engine_port: int, *, number: str = "999", body: str | None = None,
           call_id: str | None = None, branch: str | None = None, from_tag: str = "ft1",
           extra: str = "") -> tuple[str, str, str]:
    """Text of an INVITE from ``peer``; returns (text, call_id, branch)."""
    call_id = call_id or secrets.token_hex(8)
    branch = branch or "z9hG4bK" + secrets.token_hex(6)
    body = sdp_offer() if body is None else body
    text = (
        f"INVITE sip:{number}@127.0.0.1:{engine_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch={branch};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f'From: "Jo Caller" <sip:07700900123@127.0.0.1>;tag={from_tag}\r\n'
        f"To: <sip:{number}@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 INVITE\r\n"
        f"Contact: <sip:caller@127.0.0.1:{peer.port}>\r\n"
        f"{extra}"
        f"Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body.encode())}\r\n\r\n{body}")
    return text, call_id, branch


def in_dialog(method: str, peer: Peer, engine_port: int, resp: Response, *, cseq: int,
              body: str = "", from_tag: str = "ft1") -> str:
    """An in-dialog request from the caller, built from the engine's 200 OK."""
    to = resp.get("To")
    contact = resp.contact
    assert contact is not None
    branch = "z9hG4bK" + secrets.token_hex(6)
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    return (
        f"{method} {contact.uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch={branch};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f'From: "Jo Caller" <sip:07700900123@127.0.0.1>;tag={from_tag}\r\n'
        f"To: {to}\r\nCall-ID: {resp.call_id}\r\nCSeq: {cseq} {method}\r\n"
        f"Contact: <sip:caller@127.0.0.1:{peer.port}>\r\n"
        f"{ctype}Content-Length: {len(body.encode())}\r\n\r\n{body}")
