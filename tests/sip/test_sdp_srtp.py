"""SDES (RFC 4568) in offer/answer: a=crypto parsing, the per-line/per-phone policy, refusals."""

from __future__ import annotations

import base64

import pytest

from telephony.errors import SdpError
from telephony.sip import sdp

from .peer import sdp_offer

KEY = bytes(range(30))
OURS = bytes(range(100, 130))
B64 = base64.b64encode(KEY).decode()


def _offer(proto: str = "RTP/SAVP", *crypto: str) -> sdp.SessionDescription:
    text = sdp_offer().replace("RTP/AVP", proto)
    text += "".join(f"a=crypto:{c}\r\n" for c in crypto)
    return sdp.parse_sdp(text.encode())


def _answer(offer: sdp.SessionDescription, srtp: str):
    return sdp.answer(offer, codecs=["PCMA", "PCMU"], address="10.0.0.20", port=20000, ptime=20,
                      session_id=7, version=1, srtp=srtp, srtp_key=lambda suite: OURS)


@pytest.mark.parametrize("policy", ["required", "offered"])
@pytest.mark.parametrize("proto", ["RTP/SAVP", "RTP/AVP"])
def test_answer_takes_the_first_usable_crypto_line(policy: str, proto: str) -> None:
    """An unknown suite is skipped; the first known one is answered with its tag and OUR key."""
    off = _offer(proto, f"1 F8_128_HMAC_SHA1_80 inline:{B64}",
                 f"2 AES_CM_128_HMAC_SHA1_80 inline:{B64}|2^31",
                 f"3 AES_CM_128_HMAC_SHA1_32 inline:{B64}")
    ans, neg = _answer(off, policy)
    assert neg.srtp == sdp.Srtp("AES_CM_128_HMAC_SHA1_80", 2, OURS, KEY, proto)
    text = ans.encode().decode()
    assert f"m=audio 20000 {proto} 8 101\r\n" in text
    assert f"a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(OURS).decode()}\r\n" in text
    assert text.count("a=crypto") == 1


def test_off_answers_best_effort_srtp_plain_and_refuses_savp() -> None:
    """srtp = 'off': RTP/AVP with a=crypto is answered plain; RTP/SAVP is 488."""
    ans, neg = _answer(_offer("RTP/AVP", f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}"), "off")
    assert neg.srtp is None and b"a=crypto" not in ans.encode()
    with pytest.raises(SdpError) as info:
        _answer(_offer("RTP/SAVP", f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}"), "off")
    assert info.value.status == 488


def test_offered_without_crypto_is_plain() -> None:
    """srtp = 'offered' and a plain offer: plain RTP."""
    ans, neg = _answer(_offer("RTP/AVP"), "offered")
    assert neg.srtp is None and b"RTP/AVP" in ans.encode()


@pytest.mark.parametrize(("proto", "lines", "policy", "reason"), [
    ("RTP/AVP", [], "required", "SRTP required: no a=crypto in the offer"),
    ("RTP/SAVP", [], "offered", "RTP/SAVP without a=crypto"),
    ("RTP/SAVP", [f"1 AES_192_CM_HMAC_SHA1_80 inline:{B64}"], "offered",
     "SRTP required: no usable a=crypto (unknown crypto suite AES_192_CM_HMAC_SHA1_80)"),
    ("RTP/AVP", [f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}|2^20|1:4"], "required",
     "SRTP required: no usable a=crypto (MKI in a=crypto (not supported))"),
    ("RTP/SAVP", [f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64} UNENCRYPTED_SRTP"], "required",
     "SRTP required: no usable a=crypto (session parameter UNENCRYPTED_SRTP (not supported))"),
])
def test_unusable_offers_are_488_saying_why(proto, lines, policy, reason) -> None:
    """No usable crypto where SRTP is needed: 488 with a reason naming what was wrong."""
    with pytest.raises(SdpError) as info:
        _answer(_offer(proto, *lines), policy)
    assert (info.value.status, info.value.reason) == (488, reason)


@pytest.mark.parametrize(("line", "reason"), [
    ("x AES_CM_128_HMAC_SHA1_80 inline:" + B64, "the tag must be 1 to 9 digits"),
    ("1234567890 AES_CM_128_HMAC_SHA1_80 inline:" + B64, "the tag must be 1 to 9 digits"),
    ("1 AES_CM_128_HMAC_SHA1_80", "expected '<tag> <suite> inline:<key>'"),
    ("1 AES_CM_128_HMAC_SHA1_80 key:" + B64, "the key method must be inline: (tag 1)"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:!!notbase64!!", "the key is not base64 (tag 1)"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:" + base64.b64encode(KEY[:16]).decode(),
     "AES_CM_128_HMAC_SHA1_80 needs a 30-byte key, got 16 (tag 1)"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:" + B64 + "|never", "bad key lifetime (tag 1)"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:" + B64 + "|2^20|x:4", "bad MKI (tag 1)"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:" + B64 + "|1|2:4|3", "too many key parameters (tag 1)"),
])
@pytest.mark.parametrize("policy", ["required", "offered", "off"])
def test_malformed_crypto_is_488_whatever_the_policy(line: str, reason: str, policy: str) -> None:
    """A malformed a=crypto line is a clear 488 saying what is wrong (never quoting the
    key), even where SRTP is off."""
    with pytest.raises(SdpError) as info:
        _answer(_offer("RTP/AVP", line), policy)
    assert (info.value.status, info.value.reason) == (488, "Malformed a=crypto: " + reason)
    assert B64[:20] not in info.value.reason


def test_duplicate_tag_is_malformed() -> None:
    with pytest.raises(SdpError) as info:
        _answer(_offer("RTP/SAVP", f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}",
                       f"1 AES_CM_128_HMAC_SHA1_32 inline:{B64}"), "required")
    assert (info.value.status, info.value.reason) == (488, "Malformed a=crypto: tag 1 used twice")


def _our_offer(proto: str) -> tuple[sdp.SessionDescription, list[sdp.Crypto]]:
    crypto = sdp.offer_crypto(lambda suite: OURS[:sdp.CRYPTO_SUITES[suite]])
    off = sdp.offer(codecs=["PCMA"], address="10.0.0.20", port=20000, ptime=20, session_id=1,
                    crypto=crypto, proto=proto)
    return off, crypto


def test_our_offer_lists_our_suites_and_the_answer_picks_one() -> None:
    """We offer AES-GCM, then 80 and 32-bit tags, each with a key of its length; an
    answer taking tag 3 gives the 32-bit suite."""
    off, crypto = _our_offer("RTP/SAVP")
    text = off.encode().decode()
    assert "m=audio 20000 RTP/SAVP 8 101" in text
    assert [(c.tag, c.suite, len(c.key)) for c in crypto] == [
        (1, "AEAD_AES_128_GCM", 28), (2, "AES_CM_128_HMAC_SHA1_80", 30),
        (3, "AES_CM_128_HMAC_SHA1_32", 30)]
    assert "a=crypto:1 AEAD_AES_128_GCM inline:" in text
    assert "a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:" in text
    assert [sdp.parse_crypto(v) for n, v in off.media[0].attributes if n == "crypto"] == crypto
    ans = sdp.parse_sdp((sdp_offer(codecs="8 101").replace("RTP/AVP", "RTP/SAVP")
                         + f"a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:{B64}\r\n").encode())
    neg = sdp.accept_answer(ans, codecs=["PCMA"], ptime=20, crypto=crypto, srtp_required=True)
    assert neg.srtp == sdp.Srtp("AES_CM_128_HMAC_SHA1_32", 3, OURS, KEY, "RTP/SAVP")


@pytest.mark.parametrize(("extra", "required", "reason"), [
    ("", True, "SRTP required: the answer has no a=crypto"),
    (f"a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{B64}\r\n", False,
     "Answer's a=crypto (tag 3, AES_CM_128_HMAC_SHA1_80) matches none of our offer"),
    (f"a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:{B64}\r\n", False,
     "Answer's a=crypto (tag 1, AES_CM_128_HMAC_SHA1_32) matches none of our offer"),
    ("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:short\r\n", False,
     "Malformed a=crypto: the key is not base64 (tag 1)"),
])
def test_bad_answers_to_our_offer(extra: str, required: bool, reason: str) -> None:
    """An answer without crypto where we require it, or with one we did not offer: 488."""
    _, crypto = _our_offer("RTP/AVP")
    ans = sdp.parse_sdp((sdp_offer(codecs="8 101") + extra).encode())
    with pytest.raises(SdpError) as info:
        sdp.accept_answer(ans, codecs=["PCMA"], ptime=20, crypto=crypto, srtp_required=required)
    assert (info.value.status, info.value.reason) == (488, reason)


def test_best_effort_offer_answered_plain_is_plain() -> None:
    """Our RTP/AVP + a=crypto offer answered without crypto (a phone without SRTP): plain."""
    _, crypto = _our_offer("RTP/AVP")
    neg = sdp.accept_answer(sdp.parse_sdp(sdp_offer(codecs="8 101").encode()), codecs=["PCMA"],
                            ptime=20, crypto=crypto)
    assert neg.srtp is None
