"""Call metadata to the downstream CAD over MQTT (see ``cad/CONTRACT.md``).

- :func:`append_event` writes an event's CAD message to the outbox inside the caller's
  transaction; :class:`CadPublisher` drains the outbox to the broker and hears incident
  links back.
- :mod:`cad.messages` builds messages and topics; :mod:`cad.schema` validates them
  against the versioned JSON Schemas in ``cad/schema/v1``; :mod:`cad.inbound` parses
  what the CAD sends back.
"""

from .inbound import InboundError, IncidentLink
from .messages import SCHEMA_VERSION, to_message
from .publisher import CadPublisher, append_event
from .schema import SchemaError, validate

__all__ = [
    "SCHEMA_VERSION",
    "CadPublisher",
    "IncidentLink",
    "InboundError",
    "SchemaError",
    "append_event",
    "to_message",
    "validate",
]
