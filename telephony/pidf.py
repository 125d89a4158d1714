"""PIDF-LO (RFC 4119, RFC 5491, RFC 5139): a caller's location as a plain dict.

Pure: bytes in, a dict or a :class:`PidfError` out. The XML comes from the network, so it
is read with the care of defusedxml: a size limit before parsing, and no DTD at all (no
``<!DOCTYPE``, hence no entity, internal or external: nothing to expand, nothing to fetch).

The result::

    {"entity": "pres:caller@example.com" | None,
     "geodetic": [{"shape": "Point", "lat": 52.4862, "lon": -1.8904, "crs": "4326",
                   "method": "GPS", "timestamp": "2026-11-23T16:00:00Z"},
                  {"shape": "Circle", "lat": ..., "lon": ..., "radius": 18.0, "uom": "m",
                   ...}],
     "civic": [{"country": "GB", "A1": "West Midlands", "A3": "Birmingham",
                "RD": "Station Road", "HNO": "14", "PC": "B15 2TT",
                "method": "Manual", "timestamp": ...}],
     "accuracy": 18.0 | None,     # the smallest radius in metres (uncertainty)
     "warnings": ["..."]}         # shapes that were skipped, and why

Shapes read: Point, Circle, Sphere, Ellipse, Polygon (GML 3.1.1 and the GeoShape
``gs:`` elements of RFC 5491). Coordinates are WGS 84 (EPSG 4326 / 4979) latitude then
longitude, as RFC 5491 requires.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from typing import Any

MAX_BYTES = 32 * 1024
"""A PIDF-LO larger than this is refused unread (real ones are 1-3 KiB)."""

PIDF = "urn:ietf:params:xml:ns:pidf"
GEOPRIV = "urn:ietf:params:xml:ns:pidf:geopriv10"
CIVIC = "urn:ietf:params:xml:ns:pidf:geopriv10:civicAddr"
GML = "http://www.opengis.net/gml"
GS = "http://www.opengis.net/pidflo/1.0"

CIVIC_FIELDS = ("country", "A1", "A2", "A3", "A4", "A5", "A6", "PRD", "POD", "STS", "HNO",
                "HNS", "LMK", "LOC", "FLR", "NAM", "PC", "RD", "RDSEC", "RDBR", "RDSUBBR",
                "PRM", "POM", "BLD", "UNIT", "ROOM", "SEAT", "PLC", "PCN", "POBOX",
                "ADDCODE")
"""RFC 4119 / RFC 5139 civic address elements, in their document order."""

_UOM = {"urn:ogc:def:uom:EPSG::9001": "m", "urn:ogc:def:uom:EPSG::9102": "deg"}
_FIELD_MAX = 256
_DTD = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


class PidfError(ValueError):
    """The document cannot be read as PIDF-LO; the message says why (tests assert it)."""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _ns(tag: str) -> str:
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


def _text(el: ET.Element | None) -> str | None:
    if el is None or el.text is None:
        return None
    t = " ".join(el.text.split())
    return t[:_FIELD_MAX] if t else None


def _floats(text: str | None, what: str) -> list[float]:
    try:
        vals = [float(x) for x in (text or "").split()]
    except ValueError:
        raise ValueError(f"{what} is not numbers: {(text or '')[:40]!r}") from None
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{what} is not finite: {(text or '')[:40]!r}")
    return vals


def _lat_lon(text: str | None) -> dict[str, float]:
    vals = _floats(text, "gml:pos")
    if len(vals) not in (2, 3):
        raise ValueError(f"gml:pos needs 2 or 3 numbers, got {len(vals)}")
    lat, lon = vals[0], vals[1]
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ValueError(f"gml:pos out of range: {lat} {lon}")
    out = {"lat": lat, "lon": lon}
    if len(vals) == 3:
        out["alt"] = vals[2]
    return out


def _length(el: ET.Element | None, what: str) -> tuple[float, str]:
    if el is None:
        raise ValueError(f"{what} is missing")
    vals = _floats(el.text, what)
    if len(vals) != 1 or vals[0] < 0:
        raise ValueError(f"{what} must be one non-negative number")
    uom = el.get("uom") or ""
    return vals[0], _UOM.get(uom, uom)


def _crs(el: ET.Element) -> str | None:
    srs = el.get("srsName") or ""
    m = re.search(r"EPSG:+(?:[\d.]*:)?(\d+)$", srs)
    return m.group(1) if m else (srs or None)


def _shape(el: ET.Element) -> dict[str, Any]:
    """One GML/GeoShape element as a dict; ValueError with the reason if it is bad."""
    name = _local(el.tag)
    out: dict[str, Any] = {"shape": name}
    crs = _crs(el)
    if crs:
        out["crs"] = crs
    if name == "Point":
        out.update(_lat_lon(_text(el.find(f"{{{GML}}}pos"))))
    elif name in ("Circle", "Sphere"):
        out.update(_lat_lon(_text(el.find(f"{{{GML}}}pos"))))
        out["radius"], out["uom"] = _length(el.find(f"{{{GS}}}radius"), "gs:radius")
    elif name == "Ellipse":
        out.update(_lat_lon(_text(el.find(f"{{{GML}}}pos"))))
        out["semi_major"], out["uom"] = _length(el.find(f"{{{GS}}}semiMajorAxis"),
                                                "gs:semiMajorAxis")
        out["semi_minor"], _ = _length(el.find(f"{{{GS}}}semiMinorAxis"), "gs:semiMinorAxis")
        out["orientation"], _ = _length(el.find(f"{{{GS}}}orientation"), "gs:orientation")
    elif name == "Polygon":
        ring = el.find(f"{{{GML}}}exterior/{{{GML}}}LinearRing")
        if ring is None:
            raise ValueError("gml:Polygon without an exterior LinearRing")
        pos_list = ring.find(f"{{{GML}}}posList")
        if pos_list is not None:
            vals = _floats(pos_list.text, "gml:posList")
            if len(vals) % 2:
                raise ValueError("gml:posList has an odd count of numbers")
            pts = [_lat_lon(f"{vals[i]} {vals[i + 1]}") for i in range(0, len(vals), 2)]
        else:
            pts = [_lat_lon(_text(p)) for p in ring.findall(f"{{{GML}}}pos")]
        if len(pts) < 4:
            raise ValueError("gml:Polygon needs at least 4 points")
        out["points"] = [[p["lat"], p["lon"]] for p in pts[:64]]
    else:
        raise ValueError(f"shape {name} is not supported")
    return out


def _civic(el: ET.Element) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for child in el:
        name = _local(child.tag)
        if name in CIVIC_FIELDS and name not in out:
            value = _text(child)
            if value:
                out[name] = value
    return out


def parse(data: bytes) -> dict[str, Any]:
    """The locations of a PIDF-LO document; :class:`PidfError` if it cannot be read."""
    if len(data) > MAX_BYTES:
        raise PidfError(f"PIDF-LO too large ({len(data)} bytes > {MAX_BYTES})")
    if _DTD.search(data):
        raise PidfError("PIDF-LO with a DTD (<!DOCTYPE/<!ENTITY) refused")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise PidfError(f"PIDF-LO is not well-formed XML: {exc}") from None
    if root.tag != f"{{{PIDF}}}presence":
        raise PidfError(f"not a PIDF document: root element is {_local(root.tag)!r}"
                        f" in namespace {_ns(root.tag)!r}")
    geodetic: list[dict[str, Any]] = []
    civic: list[dict[str, Any]] = []
    warnings: list[str] = []
    # tuple (RFC 4119), dm:device and dm:person (RFC 4479/5491) each carry a geopriv
    # element and the timestamp of that location
    for holder in root:
        stamp = next((_text(c) for c in holder if _local(c.tag) == "timestamp"), None)
        for geopriv in holder.iter(f"{{{GEOPRIV}}}geopriv"):
            method = _text(geopriv.find(f"{{{GEOPRIV}}}method"))
            info = geopriv.find(f"{{{GEOPRIV}}}location-info")
            if info is None:
                warnings.append("geopriv without location-info")
                continue
            elements = []
            for el in info:  # RFC 4119's first form wraps the shape in gml:location
                wrapped = _ns(el.tag) == GML and _local(el.tag) == "location"
                elements.extend(list(el) if wrapped else [el])
            for el in elements:
                ns = _ns(el.tag)
                extra = {"method": method, "timestamp": stamp}
                if ns == CIVIC and _local(el.tag) == "civicAddress":
                    civic.append({**_civic(el), **extra})
                elif ns in (GML, GS):
                    try:
                        geodetic.append({**_shape(el), **extra})
                    except ValueError as exc:
                        warnings.append(str(exc))
                else:
                    warnings.append(f"location element {_local(el.tag)!r} not understood")
    if not geodetic and not civic:
        raise PidfError("PIDF-LO has no location"
                        + (f" ({'; '.join(warnings)})" if warnings else ""))
    radii = [g["radius"] for g in geodetic if g.get("uom") == "m" and "radius" in g]
    return {"entity": root.get("entity"), "geodetic": geodetic, "civic": civic,
            "accuracy": min(radii) if radii else None, "warnings": warnings}


def summary(loc: dict[str, Any]) -> str:
    """One line for a screen or a CAD text field, e.g.
    ``52.486200, -1.890400 (±18 m); 14 Station Road, Birmingham, B15 2TT, GB``."""
    parts = []
    # the shape that says how far off it may be (a circle) before a bare point
    for g in sorted(loc.get("geodetic", []), key=lambda g: "radius" not in g):
        if "lat" in g:
            unit = f" {g['uom']}" if g.get("uom") else ""
            radius = f" (±{g['radius']:g}{unit})" if "radius" in g else ""
            parts.append(f"{g['lat']:.6f}, {g['lon']:.6f}{radius}")
            break
    for c in loc.get("civic", []):
        street = " ".join(x for x in (c.get("HNO"), c.get("HNS"), c.get("RD"), c.get("STS"))
                          if x)
        fields = [c.get("NAM"), c.get("FLR") and f"floor {c['FLR']}", street,
                  c.get("A6"), c.get("A5"), c.get("A4"), c.get("A3"), c.get("PC"),
                  c.get("country")]
        parts.append(", ".join(f for f in fields if f))
        break
    return "; ".join(p for p in parts if p)
