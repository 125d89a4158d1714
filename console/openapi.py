"""The OpenAPI 3 document, generated from the endpoint table in ``console/api.py``
(which passes it in)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .http import Endpoint

_ERROR = {"description": "Refused", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}}}}


def document(endpoints: Iterable[Endpoint], csrf_header: str) -> dict[str, Any]:
    """OpenAPI 3.1 description of ``endpoints`` (every REST endpoint) and the live
    WebSocket; ``csrf_header`` is the header a state-changing call carries."""
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        params: list[dict[str, Any]] = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
            for n in re.findall(r"{(\w+)}", ep.path)]
        params += [{"name": n, "in": "query", "required": False, "description": d,
                    "schema": {"type": t}} for n, t, d in ep.query]
        if ep.csrf:
            params.append({"name": csrf_header, "in": "header", "required": True,
                           "description": "The session's CSRF token (from /api/me).",
                           "schema": {"type": "string"}})
        roles = ("public" if ep.roles is None else
                 "any logged-in user" if not ep.roles else "role: " + " or ".join(sorted(ep.roles)))
        op: dict[str, Any] = {
            "summary": ep.summary, "description": f"Access: {roles}.",
            "operationId": ep.handler.__name__, "parameters": params,
            "responses": {
                "200": ({"description": "The file (Range supported)",
                         "content": {"audio/wav": {}}} if ep.binary else
                        {"description": "OK", "content": {"application/json": {}}}),
                **{str(s): _ERROR for s in (400, 401, 403, 404, 409, 415)}},
        }
        if ep.roles is not None:
            op["security"] = [{"session": []}]
        if ep.body is not None:
            op["requestBody"] = {"required": True,
                                 "content": {"application/json": {"schema": ep.body}}}
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    paths["/api/ws"] = {"get": {
        "summary": "WebSocket: live desk view / wallboard (role handler or supervisor).",
        "description": "Messages are JSON objects with a `type`: `call.*` domain events, "
                       "`handler.state`, `desk.view` (handler), `queue.summary` (handler), "
                       "`wallboard.snapshot` (supervisor).",
        "operationId": "live", "security": [{"session": []}],
        "responses": {"101": {"description": "Switching protocols"},
                      "401": _ERROR, "403": _ERROR}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "controlroom desk API", "version": "1",
                 "description": "Handler desk, supervisor wallboard, auditor search and "
                                "access log. Call-content access needs a justification "
                                "and is logged (DPA 2018 Part 3 s.62)."},
        "paths": paths,
        "components": {"securitySchemes": {"session": {
            "type": "apiKey", "in": "cookie", "name": "cr_session"}}},
    }
