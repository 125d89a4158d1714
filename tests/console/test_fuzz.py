"""Random and hostile bodies never produce a 500: every refusal is a 4xx with a JSON message."""

from __future__ import annotations

import json
import random
import re
from typing import Any

from console.api import ENDPOINTS
from tests.console.fake import FakeBackend

from .conftest import Api

NASTY: list[Any] = [None, [], "x", 0, -1.5, True, {}, {"": ""}, {"a" * 300: 1},
                    {"call_id": None}, {"call_id": 1}, {"call_id": "x" * 5000},
                    {"state": "available", "reason": ["x"]}, {"priority": 1e308},
                    {"thrive": {"threat": 1}}, {"skills": {"../etc": 5}},
                    {"query": "\x00\ud7ff", "justification": "     x     "},
                    {"justification": "ok ok", "export": "yes"}]


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 2**63, 3.25, -1e-9])
    if kind in (2, 3):
        return "".join(rng.choice("aé<>&\"'\\/ \n0-9_📞") for _ in range(rng.randrange(12)))
    if kind == 4:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["call_id", "state", "reason", "on", "to_line", "to_handler", "thrive", "grade",
            "notes", "outcome", "priority", "skills", "query", "justification", "number",
            "line", "date_from", "date_to", "limit", "export", "username", "password", "roles"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


async def test_no_500_for_any_body(api: Api, backend: FakeBackend) -> None:
    """Each endpoint, as its allowed role, answers hostile and random bodies with < 500 and JSON errors."""
    rng = random.Random(20261123)
    for ep in ENDPOINTS:
        if ep.body is None or ep.roles is None:
            continue
        api.as_role(sorted(ep.roles)[0] if ep.roles else "handler")
        path = re.sub(r"{(\w+)}", lambda m: {"call_id": backend.past}.get(m.group(1), "x"), ep.path)  # type: ignore[attr-defined]
        bodies = NASTY + [_random_json(rng) for _ in range(25)]
        for body in bodies:
            status, data = await api.call(ep.method, path, body)
            assert status < 500, (ep.path, body, status, data)
            if status >= 400:
                assert isinstance(data, dict) and isinstance(data.get("error"), str), (ep.path, body, data)


async def test_nan_and_invalid_utf8_refused(api: Api) -> None:
    """NaN/Infinity and undecodable bytes are 400s, never passed to the backend."""
    a = api.as_role("supervisor")
    h = {"X-CSRF-Token": a.csrf, "Content-Type": "application/json"}
    r = await a.client.post("/api/supervisor/calls/c1/priority", data=b'{"priority": NaN}', headers=h)
    assert (r.status, await r.json()) == (400, {"error": "NaN is not valid JSON"})
    r = await a.client.post("/api/supervisor/calls/c1/priority", data=b'{"priority": \xff}', headers=h)
    assert (r.status, await r.json()) == (400, {"error": "body is not valid JSON"})
    r = await a.client.post("/api/supervisor/calls/c1/priority", data=json.dumps({"priority": 1}).encode() * 100000, headers=h)
    assert r.status == 413 and "error" in await r.json()
