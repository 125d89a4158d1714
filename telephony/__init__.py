"""SIP/RTP telephony for controlroom: the :class:`Engine` and its event/command API.

The rest of the service sees telephony only through :mod:`telephony.api` and
:class:`telephony.engine.Engine`. SIP itself is the sans-IO core in :mod:`telephony.sip`.
"""

from .api import EngineCommands, EngineStats, TelephonyEvent
from .engine import Engine
from .errors import EngineError, SdpError, SipError, SipParseError, TelephonyError

__all__ = [
    "Engine", "EngineCommands", "EngineError", "EngineStats", "SdpError", "SipError",
    "SipParseError", "TelephonyError", "TelephonyEvent",
]
