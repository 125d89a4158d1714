"""Transaction timers on their own (RFC 3261 §17): D, K, I, J, L and state changes."""

from __future__ import annotations

from telephony.sip.message import Request, make_response, parse
from telephony.sip.transaction import ClientTransaction, ServerTransaction, TxState

INVITE = (b"INVITE sip:1@10.0.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKt1\r\n"
          b"From: <sip:a@x>;tag=f\r\nTo: <sip:1@y>\r\nCall-ID: t1\r\nCSeq: 1 INVITE\r\n"
          b"Content-Length: 0\r\n\r\n")


def req(method: str = "INVITE") -> Request:
    r = parse(INVITE.replace(b"INVITE", method.encode()))
    assert isinstance(r, Request)
    return r


def test_invite_client_timer_d_absorbs_final_retransmissions() -> None:
    """After a 486: ACK sent, each retransmitted 486 re-ACKed but not passed up; ends at 32 s."""
    r = req()
    tx = ClientTransaction(r, ("10.0.0.2", 5060), 0.0)
    resp = make_response(r, 486, to_tag="x")
    sends, up = tx.receive(resp, 1.0)
    assert up and len(sends) == 1 and sends[0][0].startswith(b"ACK sip:1@10.0.0.2")
    sends, up = tx.receive(resp, 2.0)
    assert not up and len(sends) == 1
    assert tx.state == TxState.COMPLETED and tx.deadline == 33.0
    tx.on_timer(33.0)
    assert tx.state == TxState.TERMINATED and not tx.timed_out


def test_invite_client_accepted_passes_2xx_retransmissions_up() -> None:
    """RFC 6026: 2xx moves to Accepted; retransmitted 2xx reach the core (for re-ACK)."""
    r = req()
    tx = ClientTransaction(r, ("10.0.0.2", 5060), 0.0)
    ok = make_response(r, 200, to_tag="x")
    assert tx.receive(ok, 0.1) == ([], True)
    assert tx.receive(ok, 0.6) == ([], True)
    assert tx.state == TxState.ACCEPTED and tx.deadline == 0.1 + 32.0


def test_non_invite_client_timer_k() -> None:
    """A final response completes a non-INVITE; K (T4 = 5 s) then terminates it."""
    r = req("OPTIONS")
    tx = ClientTransaction(r, ("10.0.0.2", 5060), 0.0)
    assert tx.receive(make_response(r, 200, to_tag="x"), 0.2) == ([], True)
    assert tx.receive(make_response(r, 200, to_tag="x"), 0.3) == ([], False)
    assert tx.deadline == 5.2
    tx.on_timer(5.2)
    assert tx.state == TxState.TERMINATED


def test_invite_server_timer_g_h_and_i() -> None:
    """486 retransmitted by G until ACK; ACK -> Confirmed, I (5 s) -> Terminated; H at 32 s
    without ACK sets timed_out."""
    r = req()
    tx = ServerTransaction(r, 0.0)
    out = tx.respond(make_response(r, 486, to_tag="t"), 0.0)
    assert out[0][1] == ("10.0.0.1", 5060)
    assert tx.on_timer(0.5) and tx.deadline == 1.5
    tx.on_ack(0.7)
    assert tx.state == TxState.CONFIRMED and tx.deadline == 5.7
    assert tx.on_retransmit() == []
    tx.on_timer(5.7)
    assert tx.state == TxState.TERMINATED
    tx2 = ServerTransaction(r, 0.0)
    tx2.respond(make_response(r, 486, to_tag="t"), 0.0)
    t = 0.0
    while tx2.state != TxState.TERMINATED:
        t = tx2.deadline or 0.0
        tx2.on_timer(t)
    assert t == 32.0 and tx2.timed_out


def test_server_never_sends_two_finals_and_timer_j() -> None:
    """A second final is refused; retransmitted requests get the first; J = 32 s."""
    r = req("BYE")
    tx = ServerTransaction(r, 0.0)
    first = tx.respond(make_response(r, 200), 0.0)
    assert tx.respond(make_response(r, 500), 0.1) == []
    assert tx.on_retransmit() == first
    assert tx.deadline == 32.0


def test_invite_server_accepted_timer_l() -> None:
    """After a 2xx the INVITE server transaction lingers 64*T1 to absorb retransmissions."""
    r = req()
    tx = ServerTransaction(r, 0.0)
    ok = tx.respond(make_response(r, 200, to_tag="t"), 1.0)
    assert tx.state == TxState.ACCEPTED and tx.deadline == 33.0
    assert tx.on_retransmit() == ok


def test_finished_transactions_keep_bytes_not_parsed_messages() -> None:
    """After the final response a transaction holds its request only weakly: freed once
    the core lets go, parsed again from the kept bytes when asked (same headers)."""
    import gc
    import weakref

    r = req("BYE")
    headers = list(r.headers)
    stx = ServerTransaction(r, 0.0)
    stx.respond(make_response(r, 200, to_tag="x"), 0.0)
    assert stx.request is r  # the core still holds it: the same object, no parse
    ref = weakref.ref(r)
    del r
    gc.collect()
    assert ref() is None
    again = stx.request
    assert again.method == "BYE" and again.headers == headers
    assert stx.on_retransmit()[0][0].startswith(b"SIP/2.0 200")

    c = req()
    ctx = ClientTransaction(c, ("10.0.0.2", 5060), 0.0)
    ok = make_response(c, 200, to_tag="x")
    assert ctx.receive(ok, 0.1) == ([], True)
    assert ctx.final is ok and ctx.key == ("z9hG4bKt1", "INVITE")
    cref, okref = weakref.ref(c), weakref.ref(ok)
    del c, ok
    gc.collect()
    assert cref() is None and okref() is None and ctx.final is None
    assert ctx.request.call_id == "t1" and ctx.request.cseq == (1, "INVITE")
