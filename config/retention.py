"""How long recordings, transcripts and call records are kept, per line.

Police records are typically kept at least six years (MoPI guidance; some forces seven);
every deletion is recorded (access log, CAD system event). A call under legal hold is
never deleted whatever its age. ``0`` days keeps a kind of record for ever.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class RetentionPolicy:
    """Ages (days since the call arrived) after which each kind of record is deleted."""

    recordings_days: float = 0.0
    """The call's recording files (every segment). 0: kept for ever."""
    transcripts_days: float = 0.0
    """The final transcript, its earlier versions and its search-index entries. 0: for ever."""
    calls_days: float = 0.0
    """The call record itself (calls row, queue-log lines, CAD outbox rows); it goes with
    what hangs off it, so it must not be kept shorter than the recording or transcript.
    0: for ever."""

    def validate(self) -> None:
        for key in ("recordings_days", "transcripts_days", "calls_days"):
            if getattr(self, key) < 0:
                raise ConfigError(key, f"must be >= 0 (0 keeps for ever), got {getattr(self, key)}")
        if self.calls_days > 0:
            for key in ("recordings_days", "transcripts_days"):
                v = getattr(self, key)
                if v == 0 or v > self.calls_days:
                    raise ConfigError(key, f"must be between 0 and calls_days "
                                      f"({self.calls_days}) when call records expire, got {v}")


@dataclass(frozen=True, kw_only=True)
class RetentionSettings:
    """``[retention]``: the scheduled purge and the policies it applies."""

    enabled: bool = True
    """Run the purge inside ``controlroom serve`` every ``interval`` seconds (``controlroom
    purge`` runs it by hand either way)."""
    interval: float = 3600.0
    """Seconds between purge runs."""
    batch: int = 200
    """Calls deleted per run at most (the rest wait for the next run)."""
    default: RetentionPolicy = field(default_factory=RetentionPolicy)
    """The policy of lines not named under ``lines``."""
    lines: dict[str, RetentionPolicy] = field(default_factory=dict)
    """Per line name, e.g. ``[retention.lines.999] recordings_days = 2557``."""

    def validate(self) -> None:
        if self.interval < 1:
            raise ConfigError("interval", f"must be at least 1 s, got {self.interval}")
        if self.batch < 1:
            raise ConfigError("batch", f"must be at least 1, got {self.batch}")

    def policy(self, line: str) -> RetentionPolicy:
        """The policy for calls of ``line``."""
        return self.lines.get(line, self.default)
