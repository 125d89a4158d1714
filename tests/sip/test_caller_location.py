"""Caller numbers (raw and E.164) and the caller's location (Geolocation + PIDF-LO)."""

from __future__ import annotations

import pytest

from telephony import pidf
from telephony.numbers import from_uri_user, normalise
from telephony.sip.inbound import caller_identity, caller_number, location_info
from telephony.sip.message import Request, parse

# -- numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize("given, e164", [
    ("+447700900123", "+447700900123"),
    ("07700900123", "+447700900123"),
    ("07700 900123", "+447700900123"),
    ("+44 (0)7700 900123", "+447700900123"),
    ("+44-7700-900.123", "+447700900123"),
    ("00447700900123", "+447700900123"),
    ("447700900123", "+447700900123"),
    ("01214960000", "+441214960000"),
    ("tel:+33142685300;phone-context=+33", "+33142685300"),
    ("+12025550123", "+12025550123"),
    ("999", ""),
    ("101", ""),
    ("0770", ""),
    ("+0123456789", ""),
    ("+1234567890123456", ""),
    ("anonymous", ""),
    ("", ""),
    ("07700９00123", ""),  # a full-width digit is not a digit we dial
    ("h1", ""),
])
def test_normalise(given: str, e164: str) -> None:
    """National, international, separated and bad numbers as E.164 (or '' when not)."""
    assert normalise(given) == e164


def test_normalise_with_another_country_code() -> None:
    """A national number takes the configured country code."""
    assert normalise("0142685300", country_code="33") == "+33142685300"
    assert normalise("+447700900123", country_code="33") == "+447700900123"


def test_uri_user_kept_as_given_params_and_escapes_removed() -> None:
    """The raw number keeps its '+' and separators; user params and %-escapes go."""
    n = from_uri_user("%2B44-7700-900123;isub=12")
    assert (n.raw, n.normalised, n.withheld) == ("+44-7700-900123", "+447700900123", False)


@pytest.mark.parametrize("user, host, display", [
    ("anonymous", "anonymous.invalid", "Anonymous"),
    ("Anonymous", "example.com", ""),
    ("", "anonymous.invalid", ""),
    ("restricted", "sbc.example", "Withheld"),
])
def test_withheld(user: str, host: str, display: str) -> None:
    """RFC 3323 anonymous identities are withheld, with no normalised number."""
    n = from_uri_user(user, host=host, display=display)
    assert n.withheld and n.normalised == ""


def _invite(headers: str, body: bytes = b"", ctype: str = "application/sdp") -> Request:
    data = (f"INVITE sip:999@10.0.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx\r\n"
            f"Call-ID: a\r\nCSeq: 1 INVITE\r\nTo: <sip:999@10.0.0.2>\r\n{headers}"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    msg = parse(data)
    assert isinstance(msg, Request)
    return msg


@pytest.mark.parametrize("headers, raw, e164", [
    ("From: <sip:+447700900123@sbc;user=phone>;tag=1\r\n", "+447700900123", "+447700900123"),
    ("From: <sip:07700900123@sbc>;tag=1\r\n", "07700900123", "+447700900123"),
    ("From: <tel:+44-7700-900123>;tag=1\r\n", "+44-7700-900123", "+447700900123"),
    ("From: <sip:+441214960000;isub=4@sbc;user=phone>;tag=1\r\n", "+441214960000",
     "+441214960000"),
    # the network's asserted identity wins over From; a tel: one over a sip: one
    ("From: <sip:anonymous@anonymous.invalid>;tag=1\r\n"
     "P-Asserted-Identity: <sip:+447700900999@sbc>, <tel:+447700900123>\r\n",
     "+447700900123", "+447700900123"),
    ('From: "Anonymous" <sip:anonymous@anonymous.invalid>;tag=1\r\n', "anonymous", ""),
])
def test_caller_number_from_invite(headers: str, raw: str, e164: str) -> None:
    """The caller's number from P-Asserted-Identity / From, as given and as E.164."""
    req = _invite(headers)
    number, _ = caller_number(req)
    assert (number.raw, number.normalised) == (raw, e164)
    assert caller_identity(req)[0] == raw


# -- PIDF-LO --------------------------------------------------------------------------------

PIDF_LO = b"""<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf"
    xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
    xmlns:gp="urn:ietf:params:xml:ns:pidf:geopriv10"
    xmlns:ca="urn:ietf:params:xml:ns:pidf:geopriv10:civicAddr"
    xmlns:gml="http://www.opengis.net/gml"
    xmlns:gs="http://www.opengis.net/pidflo/1.0"
    entity="pres:+447700900123@ee.example">
  <dm:device id="handset">
    <gp:geopriv>
      <gp:location-info>
        <gml:Point srsName="urn:ogc:def:crs:EPSG::4326">
          <gml:pos>52.4862 -1.8904</gml:pos>
        </gml:Point>
        <gs:Circle srsName="urn:ogc:def:crs:EPSG::4326">
          <gml:pos>52.4862 -1.8904</gml:pos>
          <gs:radius uom="urn:ogc:def:uom:EPSG::9001">18</gs:radius>
        </gs:Circle>
      </gp:location-info>
      <gp:usage-rules/>
      <gp:method>GPS</gp:method>
    </gp:geopriv>
    <dm:deviceID>mac:1234567890ab</dm:deviceID>
    <dm:timestamp>2026-11-23T16:00:00Z</dm:timestamp>
  </dm:device>
  <tuple id="address">
    <status>
      <gp:geopriv>
        <gp:location-info>
          <ca:civicAddress xml:lang="en-GB">
            <ca:country>GB</ca:country>
            <ca:A1>West Midlands</ca:A1>
            <ca:A3>Birmingham</ca:A3>
            <ca:RD>Station Road</ca:RD>
            <ca:HNO>14</ca:HNO>
            <ca:PC>B15 2TT</ca:PC>
          </ca:civicAddress>
        </gp:location-info>
        <gp:usage-rules/>
        <gp:method>Manual</gp:method>
      </gp:geopriv>
    </status>
    <timestamp>2026-11-23T15:59:30Z</timestamp>
  </tuple>
</presence>
"""


def test_pidf_point_circle_and_civic_address() -> None:
    """Point and Circle (radius in metres) with method and timestamp; the civic address
    with its RFC 5139 fields; accuracy is the circle's radius."""
    loc = pidf.parse(PIDF_LO)
    point, circle = loc["geodetic"]
    assert point == {"shape": "Point", "crs": "4326", "lat": 52.4862, "lon": -1.8904,
                     "method": "GPS", "timestamp": "2026-11-23T16:00:00Z"}
    assert (circle["shape"], circle["radius"], circle["uom"]) == ("Circle", 18.0, "m")
    assert loc["civic"] == [{"country": "GB", "A1": "West Midlands", "A3": "Birmingham",
                             "RD": "Station Road", "HNO": "14", "PC": "B15 2TT",
                             "method": "Manual", "timestamp": "2026-11-23T15:59:30Z"}]
    assert loc["accuracy"] == 18.0 and loc["entity"] == "pres:+447700900123@ee.example"
    assert pidf.summary(loc) == ("52.486200, -1.890400 (±18 m); 14 Station Road, "
                                 "Birmingham, B15 2TT, GB")


def test_pidf_rfc4119_gml_location_wrapper_and_polygon() -> None:
    """RFC 4119's gml:location wrapper, and a polygon by posList."""
    doc = b"""<presence xmlns="urn:ietf:params:xml:ns:pidf"
      xmlns:gp="urn:ietf:params:xml:ns:pidf:geopriv10" xmlns:gml="http://www.opengis.net/gml"
      entity="pres:a@b"><tuple id="t"><status><gp:geopriv><gp:location-info>
      <gml:location><gml:Polygon srsName="urn:ogc:def:crs:EPSG::4326"><gml:exterior>
      <gml:LinearRing><gml:posList>52.0 -1.0 52.1 -1.0 52.1 -1.1 52.0 -1.0</gml:posList>
      </gml:LinearRing></gml:exterior></gml:Polygon></gml:location>
      </gp:location-info></gp:geopriv></status></tuple></presence>"""
    (poly,) = pidf.parse(doc)["geodetic"]
    assert poly["shape"] == "Polygon" and poly["points"][1] == [52.1, -1.0]


@pytest.mark.parametrize("doc, error", [
    (b"<presence", "PIDF-LO is not well-formed XML: unclosed token: line 1, column 0"),
    (b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY a "aaaa">]><p>&a;</p>',
     "PIDF-LO with a DTD (<!DOCTYPE/<!ENTITY) refused"),
    (b'<x xmlns="urn:other"/>',
     "not a PIDF document: root element is 'x' in namespace 'urn:other'"),
    (b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="pres:a@b"/>',
     "PIDF-LO has no location"),
    (b"<p>" + b"x" * 40000 + b"</p>", "PIDF-LO too large (40007 bytes > 32768)"),
])
def test_pidf_bad_documents(doc: bytes, error: str) -> None:
    """Unreadable, hostile, foreign, empty and oversized documents are refused, saying why."""
    with pytest.raises(pidf.PidfError) as exc:
        pidf.parse(doc)
    assert str(exc.value) == error


def test_pidf_bad_shape_skipped_with_warning() -> None:
    """A point out of range is skipped with the reason; the civic address is still read."""
    doc = PIDF_LO.replace(b"52.4862 -1.8904</gml:pos>\n        </gml:Point>",
                          b"152.4862 -1.8904</gml:pos>\n        </gml:Point>")
    loc = pidf.parse(doc)
    assert [g["shape"] for g in loc["geodetic"]] == ["Circle"]
    assert loc["warnings"] == ["gml:pos out of range: 152.4862 -1.8904"]
    assert loc["civic"][0]["PC"] == "B15 2TT"


# -- Geolocation + multipart ---------------------------------------------------------------

SDP = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\n"


def _multipart(pidf_body: bytes, cid: str = "loc1@sbc.example") -> tuple[bytes, str]:
    b = "bnd42"
    body = (f"--{b}\r\nContent-Type: application/sdp\r\n\r\n".encode() + SDP
            + f"\r\n--{b}\r\nContent-Type: application/pidf+xml\r\nContent-ID: <{cid}>\r\n\r\n"
            .encode() + pidf_body + f"\r\n--{b}--\r\n".encode())
    return body, f'multipart/mixed;boundary="{b}"'


def test_geolocation_cid_resolves_to_the_pidf_part() -> None:
    """Geolocation <cid:...> names the body part; its PIDF-LO is read and summarised."""
    body, ctype = _multipart(PIDF_LO)
    req = _invite("From: <sip:+447700900123@sbc>;tag=1\r\n"
                  "Geolocation: <cid:loc1@sbc.example>\r\nGeolocation-Routing: no\r\n",
                  body, ctype)
    text, detail = location_info(req)
    assert detail is not None and detail["parsed"] and detail["error"] is None
    assert (detail["by"], detail["uri"]) == ("value", "cid:loc1@sbc.example")
    assert detail["civic"][0]["RD"] == "Station Road" and detail["accuracy"] == 18.0
    assert text == "52.486200, -1.890400 (±18 m); 14 Station Road, Birmingham, B15 2TT, GB"


def test_bad_pidf_kept_as_given_with_reason() -> None:
    """A PIDF-LO that is not XML: the text as given, parsed False, the parser's reason."""
    body, ctype = _multipart(b"<presence><oops")
    req = _invite("From: <sip:1@sbc>;tag=1\r\nGeolocation: <cid:loc1@sbc.example>\r\n",
                  body, ctype)
    text, detail = location_info(req)
    assert text == "<presence><oops"
    assert detail is not None and detail["parsed"] is False
    assert detail["error"].startswith("PIDF-LO is not well-formed XML")


@pytest.mark.parametrize("value, uri", [
    ("<https://lis.example.com/loc/8f3a>", "https://lis.example.com/loc/8f3a"),
    ("<http://lis.example.com/loc/8f3a>", "http://lis.example.com/loc/8f3a"),
    ("<sip:loc-8f3a@lis.example.com>", "sip:loc-8f3a@lis.example.com"),
])
def test_location_by_reference_stored_as_given(value: str, uri: str) -> None:
    """A reference is not fetched: kept as given, by reference, not parsed, no error."""
    req = _invite(f"From: <sip:1@sbc>;tag=1\r\nGeolocation: {value}\r\n", SDP)
    text, detail = location_info(req)
    assert text == value
    assert detail == {"by": "reference", "uri": uri, "parsed": False, "error": None}


def test_cid_without_matching_part() -> None:
    """A cid naming no body part: the header as given and the reason."""
    req = _invite("From: <sip:1@sbc>;tag=1\r\nGeolocation: <cid:nowhere@sbc>\r\n", SDP)
    text, detail = location_info(req)
    assert text == "<cid:nowhere@sbc>"
    assert detail == {"by": "value", "uri": "cid:nowhere@sbc", "parsed": False,
                      "error": "no body part with Content-ID <nowhere@sbc>"}


def test_no_location() -> None:
    """No Geolocation and no PIDF-LO part: no location."""
    assert location_info(_invite("From: <sip:1@sbc>;tag=1\r\n", SDP)) == (None, None)
