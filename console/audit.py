"""One audited transcript search for the auditor page and the command line.

DPA 2018 Part 3 s.62: every consultation of call content is logged with who, when and
why. The web handler (``POST /api/audit/search``) and ``controlroom search`` both go
through :func:`prepare_search` (validate the query and the filters, parse times) and
:func:`log_search` (the same ``console_access_log`` row: action ``search``, the query,
the filters, the justification, the client), so neither can search without a reason or
write a different record.

Times given as filters are the control room's local time (the server's time zone) unless
they carry an offset; ``YYYY-MM-DD`` as an end means the end of that day.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from store.db import Database

from . import users

FILTER_KEYS = ("number", "line", "handler", "incident")
"""Exact-match filters on the call: caller number, line, handler id, incident number."""
MIN_JUSTIFICATION = 5


class AuditError(ValueError):
    """A search that may not run as asked (the message says why; HTTP 400, exit 2)."""


def parse_time(value: Any, name: str, *, end_of_day: bool = False) -> float | None:
    """Epoch seconds from epoch seconds, ``YYYY-MM-DD``, ``YYYY-MM-DD HH:MM[:SS]`` or
    ISO 8601 (local time unless an offset is given)."""
    if value in (None, ""):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            start = dt.datetime.combine(day, dt.time()).astimezone()
            return start.timestamp() + (86400.0 - 0.001 if end_of_day else 0.0)
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise AuditError(f"{name} must be YYYY-MM-DD, YYYY-MM-DD HH:MM or epoch seconds") from None
    return (when if when.tzinfo else when.astimezone()).timestamp()


def local_time(epoch: float | None) -> str:
    """An epoch time as the control room's local date and time with its zone."""
    if epoch is None:
        return ""
    return dt.datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def prepare_search(query: str, justification: str, raw: dict[str, Any], *,
                   default_limit: int = 100) -> dict[str, Any]:
    """The backend's search filters (``number``, ``line``, ``handler``, ``incident``,
    ``date_from``/``date_to`` as epoch seconds, ``limit``) from what the user gave.
    Raises :class:`AuditError` for a missing justification, bad times or a query that
    cannot be searched (checked before anything is logged or read)."""
    from transcription.errors import SearchQueryError
    from transcription.search import parse_query

    if len((justification or "").strip()) < MIN_JUSTIFICATION:
        raise AuditError("a justification is required (why this search is needed, at least "
                         f"{MIN_JUSTIFICATION} characters): it is written to the access log")
    try:
        parse_query(query)
    except SearchQueryError as exc:
        raise AuditError(f"query {query!r} cannot be searched: {exc}") from None
    filters: dict[str, Any] = {k: raw[k] for k in FILTER_KEYS if raw.get(k)}
    frm = parse_time(raw.get("date_from"), "date_from")
    to = parse_time(raw.get("date_to"), "date_to", end_of_day=True)
    if frm is not None and to is not None and frm > to:
        raise AuditError("date_from is after date_to")
    if frm is not None:
        filters["date_from"] = frm
    if to is not None:
        filters["date_to"] = to
    filters["limit"] = int(raw.get("limit") or default_limit)
    return filters


def log_search(db: Database, user: users.User, *, query: str, justification: str,
               filters: dict[str, Any], client: str) -> int:
    """Write the access-log row of a search (before any result is read)."""
    return users.log_access(db, user, action="search", justification=justification,
                            query=query, filters=filters, client=client)


def search_kwargs(filters: dict[str, Any]) -> dict[str, Any]:
    """The filters as :meth:`transcription.TranscriptSearch.search` keywords."""
    return {"line": filters.get("line"), "caller": filters.get("number"),
            "handler_id": filters.get("handler"), "since": filters.get("date_from"),
            "until": filters.get("date_to"), "incident": filters.get("incident"),
            "limit": int(filters.get("limit") or 20)}
