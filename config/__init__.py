"""Settings schema, loader and example configurations."""

from .errors import ConfigError
from .schema import (
    ClusterSettings,
    HandlerSettings,
    LineSettings,
    LoggingSettings,
    MqttSettings,
    RoutingSettings,
    Settings,
    StorageSettings,
    TranscriptionSettings,
    WebSettings,
    from_dict,
    load,
)
from .telephony import SipSettings

__all__ = [
    "ClusterSettings", "ConfigError", "HandlerSettings", "LineSettings", "LoggingSettings",
    "MqttSettings",
    "RoutingSettings", "Settings", "SipSettings", "StorageSettings", "TranscriptionSettings",
    "WebSettings", "from_dict", "load",
]
