"""SDP offer/answer (RFC 3264) and digest (RFC 2617) tests."""

from __future__ import annotations

import pytest

from telephony.errors import SdpError, SipParseError
from telephony.sip import sdp
from telephony.sip.auth import authorization, parse_challenge

from .peer import sdp_offer


def _answer(offer: str, codecs=("PCMA", "PCMU")):
    return sdp.answer(sdp.parse_sdp(offer.encode()), codecs=list(codecs), address="10.0.0.20",
                      port=20000, ptime=20, session_id=7, version=1)


def test_answer_picks_our_first_preference_present_in_offer() -> None:
    """Offer PCMU first, PCMA second: we still answer PCMA (our preference) with its PT."""
    ans, neg = _answer(sdp_offer(codecs="0 8 101"))
    assert (neg.codec, neg.payload_type, neg.dtmf_pt) == ("PCMA", 8, 101)
    assert neg.remote == ("127.0.0.1", 40000) and neg.direction == "sendrecv"
    text = ans.encode().decode()
    assert "m=audio 20000 RTP/AVP 8 101\r\n" in text
    assert "a=rtpmap:8 PCMA/8000\r\n" in text and "a=fmtp:101 0-15\r\n" in text
    assert "c=IN IP4 10.0.0.20\r\n" in text and "a=sendrecv\r\n" in text


def test_answer_static_pt_without_rtpmap_and_no_dtmf() -> None:
    """Static PT 0 without rtpmap is PCMU; no telephone-event offered -> none answered."""
    offer = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n"
    ans, neg = _answer(offer)
    assert (neg.codec, neg.dtmf_pt, neg.remote) == ("PCMU", None, ("1.2.3.4", 5004))
    assert ans.media[0].formats == ["0"]


def test_dynamic_telephone_event_pt_is_mirrored() -> None:
    """A telephone-event on PT 96 is answered on 96."""
    offer = sdp_offer(codecs="8 101").replace("101", "96")
    _, neg = _answer(offer)
    assert neg.dtmf_pt == 96


@pytest.mark.parametrize("direction,ours,hold", [
    ("sendonly", "recvonly", True), ("inactive", "inactive", True),
    ("recvonly", "sendonly", False), ("sendrecv", "sendrecv", False)])
def test_direction_mirrored(direction: str, ours: str, hold: bool) -> None:
    """sendonly->recvonly, inactive->inactive...; hold when the peer stops sending."""
    ans, neg = _answer(sdp_offer(direction=direction))
    assert (ans.media[0].direction, neg.direction, neg.on_hold) == (ours, ours, hold)


def test_c_zero_is_hold_without_remote() -> None:
    """c=0.0.0.0 (RFC 2543 hold): on hold, nowhere to send."""
    _, neg = _answer(sdp_offer(addr="0.0.0.0"))
    assert neg.on_hold and neg.remote is None


def test_no_common_codec_is_488() -> None:
    """Only G.729 offered -> SdpError 488 with the exact reason."""
    with pytest.raises(SdpError) as info:
        _answer(sdp_offer(codecs="18"))
    assert (info.value.status, info.value.reason) == (488, "No common codec (we accept PCMA, PCMU)")


def test_only_pcmu_configured() -> None:
    """With codecs=[PCMU] an A-law-only offer is refused."""
    with pytest.raises(SdpError, match="No common codec"):
        _answer(sdp_offer(codecs="8"), codecs=("PCMU",))


@pytest.mark.parametrize("body,reason", [
    (b"o=- 1 1 IN IP4 x\r\n", "SDP does not start with v=0"),
    (b"v=1\r\n", "Unsupported SDP version: '1'"),
    (b"v=0\r\nm=audio x RTP/AVP 0\r\n", "Malformed SDP media line: 'audio x RTP/AVP 0'"),
    (b"v=0\r\nc=IN IP4\r\n", "Malformed SDP connection: 'IN IP4'"),
    (b"v=0\r\ngarbage\r\n", "Malformed SDP line: 'garbage'"),
    (b"v=0\r\n\xff\r\n", "SDP is not valid UTF-8"),
])
def test_malformed_sdp_is_400(body: bytes, reason: str) -> None:
    """Malformed SDP raises SdpError(400) with the exact reason."""
    with pytest.raises(SdpError) as info:
        sdp.parse_sdp(body)
    assert (info.value.status, info.value.reason) == (400, reason)


def test_no_audio_is_488() -> None:
    """An SDP without an audio stream cannot be answered (488)."""
    with pytest.raises(SdpError, match="No audio stream"):
        _answer("v=0\r\nm=video 5000 RTP/AVP 96\r\n")


def test_offer_and_accept_answer() -> None:
    """Our offer lists our codecs + telephone-event; the answer's first codec is used."""
    off = sdp.offer(codecs=["PCMA", "PCMU"], address="10.0.0.20", port=20002, ptime=20, session_id=3)
    assert off.media[0].formats == ["8", "0", "101"]
    neg = sdp.accept_answer(sdp.parse_sdp(sdp_offer(port=41000, codecs="0 101").encode()),
                            codecs=["PCMA", "PCMU"], ptime=20)
    assert (neg.codec, neg.remote, neg.dtmf_pt) == ("PCMU", ("127.0.0.1", 41000), 101)


def test_digest_rfc2617_vector() -> None:
    """RFC 2617 §3.5 example (Mufasa) gives the published response."""
    ch = parse_challenge('Digest realm="testrealm@host.com", qop="auth,auth-int", '
                         'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
                         'opaque="5ccc069c403ebaf9f0171e9517f40e41"')
    value = authorization(ch, method="GET", uri="/dir/index.html", username="Mufasa",
                          password="Circle Of Life", nc=1, cnonce="0a4f113b")
    assert 'response="6629fae49393a05397450978507c4ef1"' in value
    assert 'opaque="5ccc069c403ebaf9f0171e9517f40e41"' in value and "nc=00000001" in value


def test_digest_without_qop_and_bad_challenges() -> None:
    """RFC 2069 style (no qop) response; non-Digest or nonce-less challenges are refused."""
    ch = parse_challenge('Digest realm="r", nonce="n"')
    value = authorization(ch, method="INVITE", uri="sip:a@b", username="u", password="p")
    assert "qop" not in value and value.startswith('Digest username="u"')
    with pytest.raises(SipParseError, match="Unsupported auth scheme: 'Basic'"):
        parse_challenge('Basic realm="r"')
    with pytest.raises(SipParseError, match="Digest challenge without realm or nonce"):
        parse_challenge('Digest realm="r"')


def test_ipv6_addresses_use_ip6() -> None:
    """An IPv6 media address is written as IN IP6 in o= and c=."""
    off = sdp.offer(codecs=["PCMA"], address="2001:db8::5", port=20000, ptime=20, session_id=1)
    text = off.encode().decode()
    assert "o=controlroom 1 1 IN IP6 2001:db8::5\r\n" in text and "c=IN IP6 2001:db8::5\r\n" in text


def test_srtp_only_offer_is_488() -> None:
    """An RTP/SAVP-only offer on a line with srtp = 'off' is refused with 488 naming SRTP."""
    with pytest.raises(SdpError) as info:
        _answer(sdp_offer().replace("RTP/AVP", "RTP/SAVP"))
    assert (info.value.status, info.value.reason) == (
        488, "Secure RTP (RTP/SAVP) is not accepted here (srtp = 'off')")


def test_answer_keeps_one_m_line_per_offered_stream() -> None:
    """Audio + video offered: the answer refuses video with port 0, in the same order."""
    offer = ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\n"
             "m=video 6000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\nm=audio 5004 RTP/AVP 8\r\n")
    ans, neg = _answer(offer)
    assert [(m.kind, m.port) for m in ans.media] == [("video", 0), ("audio", 20000)]
    assert neg.remote == ("1.2.3.4", 5004)
    assert "m=video 0 RTP/AVP 96\r\n" in ans.encode().decode()
