"""Validate CAD messages against the versioned JSON Schemas shipped in ``cad/schema/v1``.

The schema files are the contract a CAD integrator reads (see ``cad/CONTRACT.md``):

- ``call-event.json``: every call lifecycle message (one ``$defs`` entry per ``type``).
- ``queue-summary.json``: the retained queue summary.
- ``node-status.json``: the retained node status / will.
- ``incident-link.json``: what the CAD sends back on ``.../cad/incidents``.
- ``system-event.json``: node health events on ``.../system`` (storage fault/recovered).

The publisher validates each message before it is written to the outbox (a message
that fails is a bug in this service, raised at once, never sent); the inbound side
validates every incident link before acting on it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

from . import messages

SCHEMA_DIR = Path(__file__).parent / "schema" / "v1"
"""Where the v1 schema files live (shipped as package data)."""

CALL_EVENT = "call-event.json"
QUEUE_SUMMARY = "queue-summary.json"
NODE_STATUS = "node-status.json"
INCIDENT_LINK = "incident-link.json"
SYSTEM_EVENT = "system-event.json"


class SchemaError(ValueError):
    """A message does not match its schema. ``path`` is the JSON path of the problem."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


@functools.cache
def load(name: str) -> dict[str, Any]:
    """The parsed schema file ``name`` (cached)."""
    with open(SCHEMA_DIR / name, encoding="utf-8") as f:
        schema: dict[str, Any] = json.load(f)
    return schema


@functools.cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = load(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@functools.cache
def _type_validator(kind: str) -> jsonschema.protocols.Validator | None:
    """A validator for one call-event ``type`` only (the full file tries every branch,
    ~10x slower; the result is the same because each branch is selected by ``type``)."""
    full = load(CALL_EVENT)
    if kind not in full["$defs"] or kind == "envelope":
        return None
    sub = _inline(full["$defs"][kind], full)
    sub["$schema"] = full["$schema"]
    cls = jsonschema.validators.validator_for(full)
    return cls(sub, format_checker=cls.FORMAT_CHECKER)


def _inline(node: Any, root: dict[str, Any]) -> Any:
    """Replace local ``{"$ref": "#/a/b"}`` by the target: ``$ref`` look-ups dominate
    jsonschema's run time, and the call-event file has no recursive references."""
    if isinstance(node, list):
        return [_inline(x, root) for x in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/") and len(node) == 1:
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        return _inline(target, root)
    return {k: _inline(v, root) for k, v in node.items()}


def _check(name: str, message: Any) -> None:
    validator = _validator(name)
    if name == CALL_EVENT and isinstance(message, dict):
        kind = message.get("type")
        validator = (_type_validator(kind) if isinstance(kind, str) else None) or validator
    if validator.is_valid(message):  # the fast path; errors are collected only on failure
        return
    error = best_match(validator.iter_errors(message))
    if error is not None:
        raise SchemaError(error.json_path, error.message)


def schema_for(message: Any) -> str:
    """Which schema file applies to an outbound ``message`` (by its ``type``)."""
    kind = message.get("type") if isinstance(message, dict) else None
    if kind == messages.SUMMARY_TYPE:
        return QUEUE_SUMMARY
    if kind == messages.STATUS_TYPE:
        return NODE_STATUS
    if kind in messages.SYSTEM_TYPES:
        return SYSTEM_EVENT
    return CALL_EVENT


def validate(message: Any) -> None:
    """Raise :class:`SchemaError` unless ``message`` is a valid outbound CAD message."""
    _check(schema_for(message), message)


def validate_incident(message: Any) -> None:
    """Raise :class:`SchemaError` unless ``message`` is a valid inbound incident link."""
    _check(INCIDENT_LINK, message)


def is_valid(message: Any) -> bool:
    """True when :func:`validate` would pass."""
    try:
        validate(message)
    except SchemaError:
        return False
    return True
