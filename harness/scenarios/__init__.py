"""SIPp scenario XML, generated for each run from a few parameters.

Two roles:

* :func:`caller` - a UAC that calls a number through the proxy (SIPp ``-sf``, client
  mode): INVITE with an SDP offer, ACK, ``play_pcap_audio``, then BYE after ``talk_ms``
  or wait for the far end's BYE; optional hold/resume re-INVITEs, optional CANCEL at a
  given delay, or an expected failure status (404, 488...) which it ACKs.
* :func:`handler` - a UAS handler phone (server mode): 180, rings ``ring_ms`` (a CANCEL
  while ringing is answered 200 + 487 and ACK awaited), answers 200 with SDP, plays a
  pcap, then waits for BYE or sends its own after ``talk_ms``; or refuses with a status.

Branches are spelled out (``z9hG4bK-[pid]-[call_number]-inv``) so that CANCEL and the
ACK of a non-2xx answer reuse the INVITE's branch exactly, as RFC 3261 9.1 / 17.1.1.3
require. Keywords in ``[...]`` are SIPp's; SIPp strips each line's leading blanks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import quoteattr

_RTPMAP = {"PCMU": (0, "PCMU/8000"), "PCMA": (8, "PCMA/8000"), "G729": (18, "G729/8000"),
           "GSM": (3, "GSM/8000"), "G722": (9, "G722/8000")}


def sdp(codecs: Sequence[str], *, dtmf_pt: int | None = 101, direction: str = "sendrecv",
        version: int = 1) -> str:
    """An SDP body using SIPp's media keywords (``[media_ip]``, ``[media_port]``)."""
    pts = [str(_RTPMAP[c][0]) for c in codecs]
    lines = [
        "v=0",
        f"o=sipp 4242 {version} IN IP[local_ip_type] [local_ip]",
        "s=-",
        "c=IN IP[media_ip_type] [media_ip]",
        "t=0 0",
        f"m=audio [media_port] RTP/AVP {' '.join(pts + ([str(dtmf_pt)] if dtmf_pt else []))}",
    ]
    lines += [f"a=rtpmap:{_RTPMAP[c][0]} {_RTPMAP[c][1]}" for c in codecs]
    if dtmf_pt:
        lines += [f"a=rtpmap:{dtmf_pt} telephone-event/8000", f"a=fmtp:{dtmf_pt} 0-16"]
    lines += ["a=ptime:20", f"a={direction}"]
    return "\n".join(lines)


def _send(body: str, *, retrans: bool = False, extra: str = "") -> str:
    attrs = ' retrans="500"' if retrans else ""
    return f"  <send{attrs}{extra}>\n    <![CDATA[\n{body}\n    ]]>\n  </send>\n"


def _play(pcap: Path | None) -> str:
    if pcap is None:
        return ""
    return ("  <nop>\n    <action>\n"
            f"      <exec play_pcap_audio={quoteattr(str(pcap))}/>\n"
            "    </action>\n  </nop>\n")


def _pause(ms: int) -> str:
    return f'  <pause milliseconds="{int(ms)}"/>\n' if ms > 0 else ""


_INV_BRANCH = "z9hG4bK-[pid]-[call_number]-inv"


def caller(*, dialled: str, codecs: Sequence[str] = ("PCMA",), dtmf_pt: int | None = 101,
           caller_id: str = "07700900123", display: str = "", pcap: Path | None = None,
           talk_ms: int = 3000, hangup: str = "caller", expect_status: int = 200,
           cancel_after_ms: int | None = None, hold_ms: int = 0,
           extra_headers: Sequence[str] = (), wait_bye_ms: int = 600000,
           pidf: str | None = None) -> str:
    """A caller UAC scenario.

    Args:
        dialled: request-URI user (``999``); sent to ``[remote_ip]:[remote_port]`` (the proxy).
        codecs: offered in this order; ``("G729",)`` to provoke 488.
        pcap: RTP pcap played after the ACK (SIPp replays its timing).
        talk_ms: time after the ACK before the caller sends BYE (``hangup="caller"``).
        hangup: ``caller`` sends BYE; ``remote`` waits up to ``wait_bye_ms`` for the far BYE.
        expect_status: final status expected; non-200 is ACKed and the call ends there.
        cancel_after_ms: send CANCEL this long after the 180 (the callee must send 100
            and 180 first); expect 200 for the CANCEL and 487 for the INVITE.
        hold_ms: >0: after ``talk_ms`` put the call on hold (a=sendonly re-INVITE), wait
            ``hold_ms``, resume (a=sendrecv), talk ``talk_ms`` more, then hang up.
        pidf: a PIDF-LO document sent by value (RFC 6442): the INVITE body is then
            multipart/mixed (SDP + PIDF-LO) with ``Geolocation: <cid:...>``.
    """
    name = f'"{display}" ' if display else ""
    hdrs = "\n".join(extra_headers)
    from_ = f"From: {name}<sip:{caller_id}@[local_ip]:[local_port]>;tag=[pid]-[call_number]-c"
    to = f"To: <sip:{dialled}@[remote_ip]:[remote_port]>"
    common = f"Call-ID: [call_id]\nMax-Forwards: 70\nContact: <sip:{caller_id}@[local_ip]:[local_port]>"
    ctype, body = "application/sdp", sdp(codecs, dtmf_pt=dtmf_pt)
    if pidf is not None:
        cid, b = "loc-[call_number]@caller.example", "pidf-boundary-999"
        hdrs = "\n".join([*extra_headers, f"Geolocation: <cid:{cid}>", "Geolocation-Routing: no"])
        ctype = f"multipart/mixed;boundary={b}"
        body = (f"--{b}\nContent-Type: application/sdp\n\n{body}\n"
                f"--{b}\nContent-Type: application/pidf+xml\nContent-ID: <{cid}>\n\n"
                f"{pidf.strip()}\n--{b}--")
    invite = (f"INVITE sip:{dialled}@[remote_ip]:[remote_port] SIP/2.0\n"
              f"Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={_INV_BRANCH};rport\n"
              f"{from_}\n{to}\n{common}\nCSeq: 1 INVITE\n"
              f"User-Agent: sipp-caller\n{hdrs + chr(10) if hdrs else ''}"
              f"Content-Type: {ctype}\nContent-Length: [len]\n\n"
              f"{body}")
    x = ['<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="caller">\n']
    x.append(_send(invite, retrans=True, extra=' start_txn="invite"'))
    x.append('  <recv response="100" optional="true" response_txn="invite"/>\n')
    nonfinal_ack = (f"ACK sip:{dialled}@[remote_ip]:[remote_port] SIP/2.0\n"
                    f"Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={_INV_BRANCH};rport\n"
                    f"{from_}\nTo: <sip:{dialled}@[remote_ip]:[remote_port]>[peer_tag_param]\n"
                    f"Call-ID: [call_id]\nMax-Forwards: 70\nCSeq: 1 ACK\nContent-Length: 0\n")
    if cancel_after_ms is not None:
        # SIPp cannot receive during a <pause> that follows only optional receives, so the
        # CANCEL is timed from the 180: the callee must ring (handler phones do).
        x[-1] = '  <recv response="100" response_txn="invite"/>\n'
        x.append('  <recv response="180" response_txn="invite"/>\n')
        x.append(_pause(cancel_after_ms))
        x.append(_send(
            f"CANCEL sip:{dialled}@[remote_ip]:[remote_port] SIP/2.0\n"
            f"Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={_INV_BRANCH};rport\n"
            f"{from_}\n{to}\nCall-ID: [call_id]\nMax-Forwards: 70\nCSeq: 1 CANCEL\n"
            f"Content-Length: 0\n", retrans=True, extra=' start_txn="cancel"'))
        # The proxy answers the CANCEL itself while the 487 comes from the far end through
        # another proxy worker, so the two may arrive in either order: a 200 after the 487
        # matches this earlier optional receive and SIPp ignores it as a retransmission.
        x.append('  <recv response="200" response_txn="cancel" optional="true"/>\n')
        x.append('  <recv response="487" response_txn="invite"/>\n')
        x.append(_send(nonfinal_ack, extra=' ack_txn="invite"'))
        x.append("</scenario>\n")
        return "".join(x)
    x.append('  <recv response="180" optional="true" response_txn="invite"/>\n')
    x.append('  <recv response="183" optional="true" response_txn="invite"/>\n')
    if expect_status != 200:
        x.append(f'  <recv response="{expect_status}" response_txn="invite"/>\n')
        x.append(_send(nonfinal_ack, extra=' ack_txn="invite"'))
        x.append("</scenario>\n")
        return "".join(x)
    x.append('  <recv response="200" rtd="true" rrs="true" response_txn="invite"/>\n')
    in_dialog = (f"{from_}\nTo: <sip:{dialled}@[remote_ip]:[remote_port]>[peer_tag_param]\n"
                 f"Call-ID: [call_id]\nMax-Forwards: 70\n[routes]")
    ack = (f"ACK [next_url] SIP/2.0\nVia: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport\n"
           f"{in_dialog}\nCSeq: {{cseq}} ACK\nContact: <sip:{caller_id}@[local_ip]:[local_port]>\n"
           f"Content-Length: 0\n")
    x.append(_send(ack.format(cseq=1), extra=' ack_txn="invite"'))
    x.append(_play(pcap))
    cseq = 1
    x.append(_pause(talk_ms) if hangup == "caller" or hold_ms else "")
    if hold_ms:
        for direction, wait in (("sendonly", hold_ms), ("sendrecv", talk_ms)):
            cseq += 1
            x.append(_send(
                f"INVITE [next_url] SIP/2.0\nVia: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport\n"
                f"{in_dialog}\nCSeq: {cseq} INVITE\nContact: <sip:{caller_id}@[local_ip]:[local_port]>\n"
                f"Content-Type: application/sdp\nContent-Length: [len]\n\n"
                f"{sdp(codecs, dtmf_pt=dtmf_pt, direction=direction, version=cseq)}",
                retrans=True, extra=f' start_txn="reinv{cseq}"'))
            x.append(f'  <recv response="100" optional="true" response_txn="reinv{cseq}"/>\n')
            x.append(f'  <recv response="200" response_txn="reinv{cseq}"/>\n')
            x.append(_send(ack.format(cseq=cseq), extra=f' ack_txn="reinv{cseq}"'))
            x.append(_pause(wait))
    if hangup == "caller":
        cseq += 1
        x.append(_send(
            f"BYE [next_url] SIP/2.0\nVia: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport\n"
            f"{in_dialog}\nCSeq: {cseq} BYE\nContent-Length: 0\n", retrans=True,
            extra=' start_txn="bye"'))
        x.append('  <recv response="200" response_txn="bye" crlf="true"/>\n')
    else:
        x.append(f'  <recv request="BYE" timeout="{wait_bye_ms}"/>\n')
        x.append(_send("SIP/2.0 200 OK\n[last_Via:]\n[last_From:]\n[last_To:]\n[last_Call-ID:]\n"
                       "[last_CSeq:]\nContent-Length: 0\n"))
    x.append("</scenario>\n")
    return "".join(x)


def handler(*, user: str = "h1", codecs: Sequence[str] = ("PCMA", "PCMU"),
            dtmf_pt: int | None = 101, ring_ms: int = 500, pcap: Path | None = None,
            hangup: str = "remote", talk_ms: int = 3000, status: int = 200,
            wait_bye_ms: int = 600000, expect_cancel: bool = False) -> str:
    """A handler phone UAS scenario (run SIPp in server mode with ``-sf``).

    Args:
        ring_ms: 180 then this long before answering; a CANCEL meanwhile is answered
            200 + 487 and the ACK awaited (the call then counts as successful only if
            ``expect_cancel``; otherwise it counts as failed).
        status: 200 answers; anything else (486, 603) refuses after ``ring_ms``.
        hangup: ``remote`` waits for BYE; ``handler`` sends BYE after ``talk_ms``.
    """
    tag = "tag=[pid]-[call_number]-h"
    contact = f"Contact: <sip:{user}@[local_ip]:[local_port];transport=[transport]>"
    resp = ("SIP/2.0 {code}\n[last_Via:]\n[last_From:]\n[last_To:];" + tag +
            "\n[last_Call-ID:]\n[last_CSeq:]\n[last_Record-Route:]\n" + contact +
            "\nServer: sipp-handler\n")
    x = ['<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="handler">\n']
    x.append('  <recv request="INVITE" crlf="true" rrs="true">\n    <action>\n'
             '      <ereg regexp=".*" search_in="hdr" header="From:" assign_to="inv_from"/>\n'
             '      <ereg regexp="Via: [ -~]*([^ -~]+Via: [ -~]*)*" search_in="msg" '
             'assign_to="inv_via"/>\n'
             '      <ereg regexp="[0-9]+" search_in="hdr" header="CSeq:" assign_to="inv_cseq"/>\n'
             '    </action>\n  </recv>\n')
    x.append(_send(resp.format(code="180 Ringing") + "Content-Length: 0\n"))
    # Ringing = waiting for a CANCEL that may never come; the timeout moves on to answer.
    x.append(f'  <recv request="CANCEL" timeout="{max(ring_ms, 1)}" '
             f'ontimeout="answer"/>\n')
    x.append(_send("SIP/2.0 200 OK\n[last_Via:]\n[last_From:]\n[last_To:];" + tag +
                   "\n[last_Call-ID:]\n[last_CSeq:]\nContent-Length: 0\n"))
    x.append(_send("SIP/2.0 487 Request Terminated\n[$inv_via]\n[last_From:]\n[last_To:];" + tag +
                   "\n[last_Call-ID:]\nCSeq: [$inv_cseq] INVITE\nContent-Length: 0\n", retrans=True))
    x.append('  <recv request="ACK"/>\n')
    if expect_cancel:
        x.append('  <nop next="end"/>\n')
    else:
        # An unexpected CANCEL fails the call: a receive that times out with no ontimeout.
        x.append('  <recv request="UNEXPECTED-CANCEL" timeout="1"/>\n')
    x.append('  <label id="answer"/>\n')
    if status != 200:
        reason = {486: "Busy Here", 603: "Decline", 480: "Temporarily Unavailable"}.get(status, "Refused")
        x.append(_send("SIP/2.0 " + f"{status} {reason}" + "\n[$inv_via]\nFrom:[$inv_from]\n"
                       "[last_To:];" + tag + "\n[last_Call-ID:]\nCSeq: [$inv_cseq] INVITE\n"
                       "Content-Length: 0\n", retrans=True))
        x.append('  <recv request="ACK"/>\n  <label id="end"/>\n</scenario>\n')
        return "".join(x)
    x.append(_send("SIP/2.0 200 OK\n[$inv_via]\nFrom:[$inv_from]\n[last_To:];" + tag +
                   "\n[last_Call-ID:]\nCSeq: [$inv_cseq] INVITE\n[last_Record-Route:]\n" + contact +
                   "\nContent-Type: application/sdp\nContent-Length: [len]\n\n" +
                   sdp(codecs, dtmf_pt=dtmf_pt), retrans=True))
    x.append('  <recv request="ACK" rtd="true" crlf="true"/>\n')
    x.append(_play(pcap))
    if hangup == "handler":
        x.append(_pause(talk_ms))
        x.append(_send(
            "BYE [next_url] SIP/2.0\nVia: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport\n"
            f"From: <sip:{user}@[local_ip]:[local_port]>;{tag}\nTo:[$inv_from]\n[last_Call-ID:]\n"
            "CSeq: 1 BYE\nMax-Forwards: 70\n[routes]\nContent-Length: 0\n",
            retrans=True, extra=' start_txn="bye"'))
        x.append('  <recv response="200" response_txn="bye" crlf="true"/>\n')
    else:
        # Talking: accept re-INVITEs (hold: a=sendonly is answered a=recvonly) until BYE.
        x.append('  <label id="talk"/>\n')
        x.append('  <recv request="INVITE" optional="true" next="reinvite">\n    <action>\n'
                 '      <assignstr assign_to="held" value="no"/>\n'
                 '      <ereg regexp="a=sendonly" search_in="msg" check_it="false" assign_to="held"/>\n'
                 '      <strcmp assign_to="held_cmp" variable="held" value="a=sendonly"/>\n'
                 '      <test assign_to="is_held" variable="held_cmp" compare="equal" value="0"/>\n'
                 '    </action>\n  </recv>\n')
        x.append(f'  <recv request="BYE" timeout="{wait_bye_ms}"/>\n')
        x.append(_send("SIP/2.0 200 OK\n[last_Via:]\n[last_From:]\n[last_To:]\n[last_Call-ID:]\n"
                       "[last_CSeq:]\nContent-Length: 0\n"))
        x.append('  <nop next="end"/>\n')
        x.append('  <label id="reinvite"/>\n')
        ok = ("SIP/2.0 200 OK\n[last_Via:]\n[last_From:]\n[last_To:]\n[last_Call-ID:]\n"
              "[last_CSeq:]\n" + contact + "\nContent-Type: application/sdp\nContent-Length: [len]\n\n")
        x.append('  <nop next="held" test="is_held"/>\n')
        x.append(_send(ok + sdp(codecs, dtmf_pt=dtmf_pt, version=3), retrans=True))
        x.append('  <recv request="ACK" next="talk"/>\n')
        x.append('  <label id="held"/>\n')
        x.append(_send(ok + sdp(codecs, dtmf_pt=dtmf_pt, direction="recvonly", version=2),
                       retrans=True))
        x.append('  <recv request="ACK" next="talk"/>\n')
    x.append('  <label id="end"/>\n</scenario>\n')
    return "".join(x)
