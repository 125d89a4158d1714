"""The console's JSON REST API.

Each endpoint is declared once with :func:`endpoint`: method, path, the roles allowed,
the JSON schema of its body and its query parameters. The same table drives the
wrapper that enforces them (session, role, CSRF, body validation), the OpenAPI document
(``console/openapi.py``) and the role tests. Roles: ``None`` means public, an empty set
means any logged-in user.

Access to call content (search, transcript view, playback, export) needs a
``justification`` and is written to the append-only access log *before* the content is
returned (DPA 2018 Part 3 s.62).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jsonschema
import structlog
from aiohttp import web

from . import audit, users
from .backend import SETTABLE_STATES, THRIVE_KEYS
from .http import (
    CSRF_HEADER,
    ApiError,
    Ctx,
    Endpoint,
    Handler,
    cookie_name,
    forget_session,
    is_https,
    session_of,
)
from .keys import BACKEND, DB, SETTINGS, THROTTLE, TICKETS, Ticket
from .live import HISTORY
from .openapi import document

log = structlog.get_logger(__name__)

TICKET_SECONDS = 900.0


ENDPOINTS: list[Endpoint] = []


def endpoint(method: str, path: str, *, roles: set[str] | None, summary: str,
             body: dict[str, Any] | None = None,
             query: tuple[tuple[str, str, str], ...] = (),
             binary: bool = False) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        ENDPOINTS.append(Endpoint(method, path, fn, None if roles is None else frozenset(roles),
                                  summary, body, query, binary))
        return fn
    return deco


def obj(required: list[str] | None = None, **props: Any) -> dict[str, Any]:
    """A closed JSON-schema object."""
    return {"type": "object", "properties": props, "required": required or [],
            "additionalProperties": False}


STR = {"type": "string", "maxLength": 2000}
ID = {"type": "string", "minLength": 1, "maxLength": 200}
JUSTIFICATION = {"type": "string", "minLength": 5, "maxLength": 1000,
                 "description": "Why this access is needed (DPA 2018 s.62); logged."}


# ---------------------------------------------------------------------- checks
def _no_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity, which pass numeric range checks; refuse them.
    raise ValueError(f"{name} is not valid JSON")


def _wrap(ep: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    validator = jsonschema.Draft202012Validator(ep.body) if ep.body else None

    async def handle(request: web.Request) -> web.StreamResponse:
        session = None
        if ep.roles is not None:
            session = await session_of(request)
            if session is None:
                raise ApiError(401, "not logged in")
            if ep.roles and not (ep.roles & session.user.roles):
                raise ApiError(403, f"needs role {' or '.join(sorted(ep.roles))}")
            if ep.csrf and not hmac.compare_digest(
                    request.headers.get(CSRF_HEADER, "").encode(), session.csrf.encode()):
                raise ApiError(403, f"missing or wrong {CSRF_HEADER} header")
        body: dict[str, Any] = {}
        if ep.body is not None:
            if request.content_type != "application/json":
                raise ApiError(415, "body must be application/json")
            try:
                raw = json.loads(await request.text(), parse_constant=_no_constant)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ApiError(400, "body is not valid JSON") from None
            except ValueError as e:
                raise ApiError(400, str(e)) from None
            assert validator is not None
            errors = sorted(validator.iter_errors(raw), key=lambda err: list(err.path))
            if errors:
                first = errors[0]
                where = "/".join(str(p) for p in first.absolute_path) or "body"
                raise ApiError(400, f"{where}: {first.message}")
            body = raw
        return await ep.handler(request, Ctx(session, body))

    return handle


def add_routes(app: web.Application) -> None:
    for ep in ENDPOINTS:
        app.router.add_route(ep.method, ep.path, _wrap(ep))


def ok(data: Any = None) -> web.Response:
    return web.json_response({"ok": True} if data is None else data)


def _client(request: web.Request) -> str:
    return request.remote or ""


def _handler_id(ctx: Ctx) -> str:
    if not ctx.user.handler_id:
        raise ApiError(403, "this user is not a call handler")
    return ctx.user.handler_id


def _int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None
    if not lo <= v <= hi:
        raise ApiError(400, f"{name} must be between {lo} and {hi}")
    return v


# ---------------------------------------------------------------------- auth
@endpoint("POST", "/api/login", roles=None, summary="Log in; sets the session cookie.",
          body=obj(["username", "password"], username=ID, password={"type": "string", "maxLength": 1000}))
async def login(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    db, throttle = request.app[DB], request.app[THROTTLE]
    name = ctx.body["username"]
    if throttle.blocked(name, time.time()):
        raise ApiError(429, "too many failed logins; wait a few minutes")
    user = await asyncio.to_thread(users.verify_password, db, name, ctx.body["password"])
    if user is None:
        throttle.failed(name, time.time())
        log.warning("console.login_failed", username=name, client=_client(request))
        raise ApiError(401, "wrong user name or password")
    throttle.succeeded(name)
    settings = request.app[SETTINGS]
    token, session = users.open_session(db, user, hours=settings.session_hours)
    log.info("console.login", username=name, client=_client(request))
    resp = web.json_response(_me(session))
    resp.set_cookie(cookie_name(request), token, httponly=True, samesite="Strict",
                    secure=is_https(request), path="/",
                    max_age=int(settings.session_hours * 3600))
    return resp


def _me(s: users.Session) -> dict[str, Any]:
    return {"username": s.user.username, "roles": sorted(s.user.roles),
            "handler_id": s.user.handler_id, "csrf": s.csrf, "expires_at": s.expires_at}


@endpoint("POST", "/api/logout", roles=set(), summary="Log out (ends the session).")
async def logout(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    token = request.cookies.get(cookie_name(request), "")
    forget_session(request, token)  # first: a store that is away cannot end it below
    users.close_session(request.app[DB], token)
    resp = ok()
    resp.del_cookie(cookie_name(request), path="/")
    return resp


@endpoint("GET", "/api/me", roles=set(), summary="Who am I: user, roles, handler id, CSRF token.")
async def me(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.session is not None
    return ok(_me(ctx.session))


# ---------------------------------------------------------------------- handler desk
H = {"handler"}


@endpoint("GET", "/api/desk", roles=H, summary="My desk: state, today's figures, offer, call, wrap-up.")
async def desk(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return ok(await request.app[BACKEND].handler_view(_handler_id(ctx)))


@endpoint("POST", "/api/desk/state", roles=H, summary="Set my state (available / not ready / logged out).",
          body=obj(["state"], state={"enum": list(SETTABLE_STATES)}, reason=STR))
async def desk_state(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    await request.app[BACKEND].set_handler_state(_handler_id(ctx), ctx.body["state"],
                                                 ctx.body.get("reason", ""))
    return ok()


async def _my_card(request: web.Request, ctx: Ctx, slot: str, call_id: str) -> str:
    """Check the call is in my ``offer``/``call``/``wrapup`` slot: a handler acts only on
    their own call, whatever id the browser sends."""
    hid = _handler_id(ctx)
    view = await request.app[BACKEND].handler_view(hid)
    card = view.get(slot)
    if not card or card.get("call_id") != call_id:
        what = {"offer": "ringing on your phone", "call": "your connected call",
                "wrapup": "in your wrap-up"}[slot]
        raise ApiError(409, f"call {call_id} is not {what}")
    return hid


@endpoint("POST", "/api/desk/offer/accept", roles=H, summary="Acknowledge the ringing call.",
          body=obj(["call_id"], call_id=ID))
async def offer_accept(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    hid = await _my_card(request, ctx, "offer", ctx.body["call_id"])
    await request.app[BACKEND].accept_offer(hid, ctx.body["call_id"])
    return ok()


@endpoint("POST", "/api/desk/offer/reject", roles=H,
          summary="Decline the ringing call (with why): it goes back to its place in the "
                  "queue and I am not ready ('rejected: <reason>') until I say I am ready.",
          body=obj(["call_id"], call_id=ID, reason={"type": "string", "maxLength": 200}))
async def offer_reject(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    hid = await _my_card(request, ctx, "offer", ctx.body["call_id"])
    await request.app[BACKEND].reject_offer(hid, ctx.body["call_id"],
                                            ctx.body.get("reason", ""))
    return ok()


@endpoint("POST", "/api/desk/calls/{call_id}/hold", roles=H, summary="Hold / unhold my call.",
          body=obj(["on"], on={"type": "boolean"}))
async def call_hold(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    cid = request.match_info["call_id"]
    await _my_card(request, ctx, "call", cid)
    await request.app[BACKEND].hold(cid, ctx.body["on"])
    return ok()


@endpoint("POST", "/api/desk/calls/{call_id}/transfer", roles=H,
          summary="Transfer my call to a line's queue or a named handler (exactly one); "
                  "to a less urgent line (a 999 to 101) only with confirm: 409 otherwise.",
          body={**obj([], to_line=ID, to_handler=ID, confirm={"type": "boolean"}),
                "minProperties": 1, "maxProperties": 2,
                # exactly one target; confirm goes only with a line
                "dependentSchemas": {"to_handler": {"maxProperties": 1}}})
async def call_transfer(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    cid = request.match_info["call_id"]
    hid = await _my_card(request, ctx, "call", cid)
    if ctx.body.get("to_handler") == hid:
        raise ApiError(400, "cannot transfer a call to yourself")
    await request.app[BACKEND].transfer(cid, to_line=ctx.body.get("to_line"),
                                        to_handler=ctx.body.get("to_handler"),
                                        confirm=bool(ctx.body.get("confirm")))
    return ok()


@endpoint("POST", "/api/desk/calls/{call_id}/consult", roles=H,
          summary="Consult another agency on my call: step 'call' with an agency from "
                  "config consult_numbers (the caller is held with the prompt), then "
                  "'conference', 'transfer', 'consult' or 'return'.",
          body=obj(["step"], step={"enum": ["call", "consult", "conference", "transfer",
                                            "return"]}, agency=ID))
async def call_consult(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    cid = request.match_info["call_id"]
    hid = await _my_card(request, ctx, "call", cid)
    backend = request.app[BACKEND]
    if not hasattr(backend, "consult"):
        raise ApiError(409, "this backend cannot consult")
    if ctx.body["step"] == "call" and not ctx.body.get("agency"):
        raise ApiError(400, "agency is required to call")
    return ok(await backend.consult(cid, hid, ctx.body["step"], ctx.body.get("agency", "")))


@endpoint("POST", "/api/desk/calls/{call_id}/end", roles=H, summary="End my call.")
async def call_end(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    cid = request.match_info["call_id"]
    await _my_card(request, ctx, "call", cid)
    await request.app[BACKEND].end_call(cid)
    return ok()


GRADE = {"enum": ["", "1", "2", "3", "4"]}


def _gradable(view: dict[str, Any], call_id: str) -> bool:
    """My connected call, the call in my wrap-up, or one whose grading I left unsaved."""
    return (any((view.get(s) or {}).get("call_id") == call_id for s in ("wrapup", "call"))
            or any(d.get("call_id") == call_id for d in view.get("drafts") or []))


@endpoint("POST", "/api/desk/calls/{call_id}/wrapup", roles=H,
          summary="Submit THRIVE, incident grade and notes for my ended (or connected) call.",
          body=obj(["thrive", "grade"],
                   thrive=obj(list(THRIVE_KEYS), **{k: STR for k in THRIVE_KEYS}),
                   grade=GRADE, notes={"type": "string", "maxLength": 20000}))
async def call_wrapup(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    cid = request.match_info["call_id"]
    hid = _handler_id(ctx)
    view = await request.app[BACKEND].handler_view(hid)
    # THRIVE is re-applied as the call goes: grading during the call is allowed too, and
    # a grading typed before the wrap-up ran out can still be finished (its draft).
    if not _gradable(view, cid):
        raise ApiError(409, f"call {cid} is not your call or in your wrap-up")
    await request.app[BACKEND].wrapup(cid, hid, ctx.body["thrive"], ctx.body["grade"],
                                      ctx.body.get("notes", ""))
    return ok()


@endpoint("POST", "/api/desk/calls/{call_id}/draft", roles=H,
          summary="Keep the grading I am typing with its call (not sent to the CAD).",
          body=obj([], thrive=obj([], **{k: STR for k in THRIVE_KEYS}),
                   grade=GRADE, notes={"type": "string", "maxLength": 20000}))
async def call_draft(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    cid = request.match_info["call_id"]
    hid = _handler_id(ctx)
    view = await request.app[BACKEND].handler_view(hid)
    if not _gradable(view, cid):
        raise ApiError(409, f"call {cid} is not your call or in your wrap-up")
    await request.app[BACKEND].save_draft(cid, hid, ctx.body)
    return ok()


@endpoint("POST", "/api/desk/wrapup/end", roles=H, summary="Finish wrap-up: ready for the next call.")
async def wrapup_end(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    await request.app[BACKEND].end_wrapup(_handler_id(ctx))
    return ok()


@endpoint("POST", "/api/desk/wrapup/extend", roles=H,
          summary="Add time to my wrap-up (up to the line's limit).",
          body=obj(["seconds"], seconds={"type": "number", "minimum": 1, "maximum": 3600}))
async def wrapup_extend(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    await request.app[BACKEND].extend_wrapup(_handler_id(ctx), ctx.body["seconds"])
    return ok()


@endpoint("GET", "/api/calls/previous", roles={"handler", "supervisor"},
          summary="Earlier calls from a number (no content).",
          query=(("number", "string", "caller number"), ("limit", "integer", "1..50")))
async def previous(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    number = request.query.get("number", "").strip()
    if not number or len(number) > 64:
        raise ApiError(400, "number is required (max 64 characters)")
    limit = _int_query(request, "limit", 10, 1, 50)
    return ok(await request.app[BACKEND].previous_calls(number, limit))


# ---------------------------------------------------------------------- call-backs
@endpoint("GET", "/api/callbacks", roles={"handler", "supervisor"}, summary="The call-back list.")
async def callbacks(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return ok(await request.app[BACKEND].callbacks())


@endpoint("POST", "/api/callbacks/{cb_id}/take", roles=H, summary="Take a call-back (as me).")
async def callback_take(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    await request.app[BACKEND].take_callback(request.match_info["cb_id"], _handler_id(ctx))
    return ok()


@endpoint("POST", "/api/callbacks/{cb_id}/dial", roles=H,
          summary="Click-to-dial a call-back I took: the caller is called through the "
                  "trunk and my phone rings into the call; a new call linked to the "
                  "abandoned one (recorded, published to the CAD).")
async def callback_dial(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    backend = request.app[BACKEND]
    if not hasattr(backend, "dial_callback"):
        raise ApiError(409, "this backend cannot dial")
    call_id = await backend.dial_callback(request.match_info["cb_id"], _handler_id(ctx))
    return ok({"call_id": call_id})


def _cb_actor(ctx: Ctx) -> str | None:
    """Who acts on a call-back: None for a supervisor (any entry), else the handler (only
    the entries they took)."""
    return None if "supervisor" in ctx.user.roles else _handler_id(ctx)


@endpoint("POST", "/api/callbacks/{cb_id}/release", roles={"handler", "supervisor"},
          summary="Give a taken call-back back to the list (its owner, or a supervisor).")
async def callback_release(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    cb_id = request.match_info["cb_id"]
    await request.app[BACKEND].release_callback(cb_id, _cb_actor(ctx))
    log.info("console.callback_released", by=ctx.user.username, cb_id=cb_id)
    return ok()


@endpoint("POST", "/api/callbacks/{cb_id}/complete", roles={"handler", "supervisor"},
          summary="Close a call-back with its outcome (its owner, or a supervisor).",
          body=obj(["outcome"], outcome={"type": "string", "minLength": 1, "maxLength": 500}))
async def callback_complete(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    await request.app[BACKEND].complete_callback(request.match_info["cb_id"], ctx.body["outcome"],
                                                 _cb_actor(ctx))
    return ok()


# ---------------------------------------------------------------------- supervisor
S = {"supervisor"}


@endpoint("GET", "/api/wallboard", roles=S, summary="Wallboard snapshot.")
async def wallboard(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return ok(await request.app[BACKEND].snapshot())


@endpoint("GET", "/api/wallboard/history", roles=S,
          summary="Per-line samples of waiting calls and SL for the last hours (chart).")
async def wallboard_history(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return ok(request.app[HISTORY].samples())


@endpoint("POST", "/api/supervisor/calls/{call_id}/priority", roles=S,
          summary="Re-prioritise a waiting call (lower is more urgent).",
          body=obj(["priority"], priority={"type": "number", "minimum": -100, "maximum": 100}))
async def reprioritise(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    await request.app[BACKEND].reprioritise(request.match_info["call_id"], ctx.body["priority"])
    log.info("console.reprioritise", by=ctx.user.username, call_id=request.match_info["call_id"],
             priority=ctx.body["priority"])
    return ok()


@endpoint("POST", "/api/supervisor/calls/{call_id}/monitor", roles=S,
          summary="Listen to, whisper to or barge into a connected call: your phone (or "
                  "``phone``) rings into it; ``stop`` hangs it up. Access-logged with the "
                  "justification; each step is in the call's queue log.",
          body=obj(["mode", "justification"],
                   mode={"enum": ["listen", "whisper", "barge", "stop"]},
                   justification=JUSTIFICATION,
                   phone={"type": "string", "pattern": "^sips?:", "maxLength": 200}))
async def supervisor_monitor(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    cid, mode = request.match_info["call_id"], ctx.body["mode"]
    backend = request.app[BACKEND]
    if not hasattr(backend, "monitor"):
        raise ApiError(501, "this backend cannot monitor calls")
    if mode != "stop":   # logged before anyone hears anything
        users.log_access(request.app[DB], ctx.user, action=mode, call_id=cid,
                         justification=ctx.body["justification"], client=_client(request))
    # The phone that rings: the one given, else the user's own (admin page), else the
    # handler entry of the configuration with this user name (the backend looks).
    phone = ctx.body.get("phone") or users.user_phone(request.app[DB], ctx.user.username)
    result = await backend.monitor(cid, ctx.user.username, mode, phone)
    log.info("console.monitor", by=ctx.user.username, call_id=cid, mode=mode)
    return ok(result)


@endpoint("POST", "/api/supervisor/handlers/{handler_id}/state", roles=S,
          summary="Set a handler available, not ready or logged out, with a reason (logged "
                  "with who did it; available ends a wrap-up even if its grading is due).",
          body=obj(["state", "reason"], state={"enum": list(SETTABLE_STATES)},
                   reason={"type": "string", "minLength": 1, "maxLength": 500}))
async def supervisor_state(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    hid, state = request.match_info["handler_id"], ctx.body["state"]
    reason = ctx.body["reason"].strip()
    if not reason:
        raise ApiError(400, "a reason is required")
    by = ctx.user.username
    await request.app[BACKEND].set_handler_state(
        hid, state, reason if state == "available" else f"{reason} (set by {by})", by=by)
    log.info("console.handler_state_set", by=by, handler_id=hid, state=state, reason=reason)
    return ok()


@endpoint("POST", "/api/supervisor/lines/{line}/wrapup-limit", roles=S,
          summary="How many seconds a handler may add to a wrap-up on this line (logged).",
          body=obj(["seconds"], seconds={"type": "number", "minimum": 0, "maximum": 3600}))
async def wrapup_limit(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    line = request.match_info["line"]
    await request.app[BACKEND].set_wrapup_limit(line, ctx.body["seconds"], ctx.user.username)
    log.info("console.wrapup_limit", by=ctx.user.username, line=line, seconds=ctx.body["seconds"])
    return ok()


@endpoint("POST", "/api/supervisor/handlers/{handler_id}/skills", roles=S,
          summary="Replace a handler's skills (name -> proficiency 1..10).",
          body=obj(["skills"], skills={
              "type": "object", "maxProperties": 50,
              "propertyNames": {"pattern": "^[A-Za-z0-9_-]{1,32}$"},
              "additionalProperties": {"type": "integer", "minimum": 1, "maximum": 10}}))
async def supervisor_skills(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    await request.app[BACKEND].set_skills(request.match_info["handler_id"], ctx.body["skills"])
    return ok()


# ---------------------------------------------------------------------- auditor
A = {"auditor"}


DATE = {"type": ["string", "number", "null"]}
FILTER = {"type": ["string", "null"], "maxLength": 200}


@endpoint("POST", "/api/audit/search", roles=A,
          summary="Search transcripts (access-logged; needs a justification).",
          body=obj(["query", "justification"], query={"type": "string", "minLength": 1, "maxLength": 500},
                   justification=JUSTIFICATION, number=FILTER, line=FILTER, handler=FILTER,
                   incident=FILTER, date_from=DATE, date_to=DATE,
                   limit={"type": "integer", "minimum": 1, "maximum": 500},
                   before={"type": ["integer", "null"], "minimum": 0}))
async def search(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    # The same checks and access-log row as `controlroom search` (console/audit.py).
    b = ctx.body
    try:
        filters = audit.prepare_search(b["query"], b["justification"], b)
    except audit.AuditError as exc:
        raise ApiError(400, str(exc)) from None
    audit.log_search(request.app[DB], ctx.user, query=b["query"], justification=b["justification"],
                     filters=filters, client=_client(request))
    more = {"before": b["before"]} if b.get("before") is not None else {}  # continue further back
    hits = await request.app[BACKEND].search(b["query"], **filters, **more)
    # how far back it looked (a search stops at its budget on a big index)
    coverage = hits.coverage() if hasattr(hits, "coverage") else None
    return ok({"hits": list(hits), **({"coverage": coverage} if coverage else {})})


async def _sha256(path: Path) -> str:
    def digest() -> str:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()
    return await asyncio.to_thread(digest)


@endpoint("POST", "/api/audit/calls/{call_id}", roles=A,
          summary="Open a call: metadata, timeline, transcript, recording verified by SHA-256 "
                  "(access-logged; needs a justification).",
          body=obj(["justification"], justification=JUSTIFICATION))
async def call_view(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    cid = request.match_info["call_id"]
    backend = request.app[BACKEND]
    detail = await backend.call_detail(cid)   # 404 before logging a view of nothing
    users.log_access(request.app[DB], ctx.user, action="view", call_id=cid,
                     justification=ctx.body["justification"], client=_client(request))
    rec = detail.get("recording")
    if rec:
        path, sha = await backend.recording_file(cid)
        try:
            actual = await _sha256(path)
        except OSError as e:
            rec.update(verified=False, computed_sha256=None, verify_error=f"cannot read: {e.strerror}")
        else:
            rec.update(verified=hmac.compare_digest(actual, sha), computed_sha256=actual,
                       expected_sha256=sha)
        if not rec["verified"]:
            log.error("console.recording_checksum_mismatch", call_id=cid, expected=sha,
                      actual=rec.get("computed_sha256"))
    return ok(detail)


@endpoint("POST", "/api/audit/calls/{call_id}/playback", roles=A,
          summary="Get a short-lived URL to play (or export) the recording "
                  "(access-logged; needs a justification).",
          body=obj(["justification"], justification=JUSTIFICATION, export={"type": "boolean"}))
async def playback(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    cid = request.match_info["call_id"]
    await request.app[BACKEND].recording_file(cid)   # 404 if none
    export = bool(ctx.body.get("export"))
    users.log_access(request.app[DB], ctx.user, action="export" if export else "playback",
                     call_id=cid, justification=ctx.body["justification"], client=_client(request))
    tickets = request.app[TICKETS]
    now = time.time()
    for k in [k for k, t in tickets.items() if t.expires_at < now]:
        del tickets[k]
    ticket = secrets.token_urlsafe(24)
    tickets[ticket] = Ticket(ctx.user.username, cid, now + TICKET_SECONDS, export)
    return ok({"url": f"/api/audit/calls/{cid}/recording?ticket={ticket}",
               "expires_at": now + TICKET_SECONDS})


@endpoint("GET", "/api/audit/calls/{call_id}/recording", roles=A,
          summary="Stream the recording (HTTP Range supported); needs a playback ticket.",
          query=(("ticket", "string", "from POST .../playback"),), binary=True)
async def recording(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    cid = request.match_info["call_id"]
    t = request.app[TICKETS].get(request.query.get("ticket", ""))
    if t is None or t.call_id != cid or t.username != ctx.user.username or t.expires_at < time.time():
        raise ApiError(400, "a justification is required: POST /api/audit/calls/{id}/playback "
                            "to get a playback ticket")
    path, _ = await request.app[BACKEND].recording_file(cid)
    if not path.is_file():
        raise ApiError(404, f"recording file for call {cid} is missing")
    headers = {"Cache-Control": "no-store"}
    if t.export:
        headers["Content-Disposition"] = f'attachment; filename="{cid}{path.suffix}"'
    # FileResponse serves Range / If-Range itself, so the audio element can seek.
    return web.FileResponse(path, headers=headers)


# ---------------------------------------------------------------------- admin
LOG_QUERY = (("limit", "integer", "1..1000"), ("before_id", "integer", "page back"),
             ("username", "string", "only this user"),
             ("action", "string", "search|view|playback|export"),
             ("date_from", "string", "local date YYYY-MM-DD (from its start) or epoch s"),
             ("date_to", "string", "local date YYYY-MM-DD (to its end) or epoch s"))


def _log_filters(request: web.Request) -> dict[str, Any]:
    action = request.query.get("action") or None
    if action is not None and action not in users.ACCESS_ACTIONS:
        raise ApiError(400, f"action must be one of {', '.join(users.ACCESS_ACTIONS)}")
    try:
        since = audit.parse_time(request.query.get("date_from") or None, "date_from")
        until = audit.parse_time(request.query.get("date_to") or None, "date_to",
                                 end_of_day=True)
    except audit.AuditError as exc:
        raise ApiError(400, str(exc)) from None
    if since is not None and until is not None and until <= since:
        raise ApiError(400, "date_to must be after date_from")
    before = request.query.get("before_id")
    return {"before_id": _int_query(request, "before_id", 0, 1, 2**62) if before else None,
            "username": request.query.get("username") or None, "action": action,
            "since": since, "until": until}


@endpoint("GET", "/api/admin/access-log", roles={"admin"},
          summary="The DPA s.62 access log, newest first.", query=LOG_QUERY)
async def access_log(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return ok(users.access_log(request.app[DB], limit=_int_query(request, "limit", 200, 1, 1000),
                               **_log_filters(request)))


@endpoint("GET", "/api/admin/access-log.csv", roles={"admin"},
          summary="The access log (same filters, up to 100,000 rows) as CSV; the export is "
                  "itself written to the admin log.", query=LOG_QUERY[1:], binary=True)
async def access_log_csv(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    filters = _log_filters(request)
    rows = users.access_log(request.app[DB], limit=100_000, **filters)
    users.log_admin(request.app[DB], ctx.user, "access_log.export",
                    detail={**{k: v for k, v in filters.items() if v is not None},
                            "rows": len(rows)}, client=_client(request))
    return web.Response(text=users.access_log_csv(rows), content_type="text/csv",
                        charset="utf-8", headers={
                            "Content-Disposition": 'attachment; filename="access-log.csv"',
                            "Cache-Control": "no-store"})


@endpoint("GET", "/api/admin/admin-log", roles={"admin"},
          summary="Who changed which user, and who exported the access log (newest first).")
async def admin_log(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return ok(users.admin_log(request.app[DB], limit=_int_query(request, "limit", 200, 1, 1000)))


@endpoint("GET", "/api/admin/users", roles={"admin"}, summary="Console users.")
async def list_users(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return ok(users.list_users(request.app[DB]))


@endpoint("POST", "/api/admin/users", roles={"admin"}, summary="Create a console user.",
          body=obj(["username", "password", "roles"], username=ID,
                   password={"type": "string", "maxLength": 1000},
                   roles={"type": "array", "items": {"enum": list(users.ROLES)},
                          "minItems": 1, "uniqueItems": True},
                   handler_id=ID))
async def add_user(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    b = ctx.body
    try:
        u = await asyncio.to_thread(users.create_user, request.app[DB], b["username"],
                                    b["password"], b["roles"], handler_id=b.get("handler_id"))
    except users.UserError as e:
        raise ApiError(400, str(e)) from None
    log.info("console.user_added", by=ctx.user.username, username=u.username, roles=sorted(u.roles))
    users.log_admin(request.app[DB], ctx.user, "user.create", target=u.username,
                    detail={"roles": sorted(u.roles), "handler_id": u.handler_id},
                    client=_client(request))
    return ok({"username": u.username, "roles": sorted(u.roles), "handler_id": u.handler_id})


@endpoint("POST", "/api/admin/users/{username}", roles={"admin"},
          summary="Change a user: disable or re-enable, reset the password, or replace the "
                  "roles (one change per request; logged; the user's sessions end).",
          body={**obj([], disabled={"type": "boolean"},
                      password={"type": "string", "maxLength": 1000},
                      roles={"type": "array", "items": {"enum": list(users.ROLES)},
                             "minItems": 1, "uniqueItems": True},
                      handler_id=ID,
                      phone={"type": "string", "maxLength": 200}),
                "minProperties": 1})
async def change_user(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    name, b, db = request.match_info["username"], ctx.body, request.app[DB]
    changes = [k for k in ("disabled", "password", "roles", "phone") if k in b]
    if len(changes) != 1 or ("handler_id" in b and "roles" not in b):
        raise ApiError(400, "give exactly one of disabled, password, roles or phone "
                            "(handler_id only with roles)")
    if name == ctx.user.username and ("disabled" in b or "roles" in b):
        raise ApiError(400, "you cannot disable yourself or change your own roles")
    detail: dict[str, Any]
    try:
        if "disabled" in b:
            await asyncio.to_thread(users.set_disabled, db, name, b["disabled"])
            action, detail = ("user.disable" if b["disabled"] else "user.enable"), {}
        elif "password" in b:
            await asyncio.to_thread(users.reset_password, db, name, b["password"])
            action, detail = "user.password_reset", {}
        elif "phone" in b:
            phone = users.set_phone(db, name, b["phone"])
            action, detail = "user.phone", {"phone": phone}
        else:
            u = await asyncio.to_thread(users.set_roles, db, name, b["roles"],
                                        handler_id=b.get("handler_id"))
            action, detail = "user.roles", {"roles": sorted(u.roles), "handler_id": u.handler_id}
    except users.UserError as e:
        raise ApiError(404 if str(e).startswith("no user") else 400, str(e)) from None
    users.log_admin(db, ctx.user, action, target=name, detail=detail, client=_client(request))
    log.info("console.user_changed", by=ctx.user.username, username=name, action=action)
    return ok()


@endpoint("GET", "/api/openapi.json", roles=None, summary="This API as OpenAPI 3.")
async def openapi_doc(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return ok(_openapi())


@functools.cache
def _openapi() -> dict[str, Any]:
    return document(ENDPOINTS, CSRF_HEADER)
