"""A fake of the telephony.media contract (/work/notes/media_api.md) for engine tests.

It records every call made on it so tests can assert what the engine asked of media.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class Codec(enum.Enum):
    PCMU = 0
    PCMA = 8


class MediaError(Exception):
    pass


@dataclass(frozen=True)
class RecordingInfo:
    call_id: str
    path: Path
    sha256: str
    duration: float
    bytes: int
    recovered: bool


@dataclass(eq=False)
class FakeStream:
    local_port: int
    remote: tuple[str, int] | None = None
    codec: Any = None
    dtmf_pt: int | None = None
    ptime: int = 20
    direction: str = "sendrecv"
    prompt: str | None = None
    closed: bool = False
    last_rx: float | None = None
    stats: Any = None
    dtmf_sent: list[str] = field(default_factory=list)
    tag: str = ""
    latch_host: str | None = None

    def allow_latch(self, host: str, *, tag: str = "") -> None:
        self.latch_host, self.tag = host, tag

    def configure(self, *, remote, codec, dtmf_pt, ptime=20) -> None:
        self.remote, self.codec, self.dtmf_pt, self.ptime = remote, codec, dtmf_pt, ptime

    def set_direction(self, direction: str) -> None:
        self.direction = direction

    def play(self, prompt: str) -> None:
        self.prompt = prompt

    def send_dtmf(self, digit: str, duration_ms: int = 160) -> None:
        self.dtmf_sent.append(digit)

    def close(self) -> None:
        self.closed = True


@dataclass(eq=False)
class FakeRecording:
    call_id: str
    path: Path
    caller: FakeStream | None = None
    handler: FakeStream | None = None
    handler_history: list[FakeStream | None] = field(default_factory=list)
    sealed: bool = False

    def attach_caller(self, stream: FakeStream) -> None:
        self.caller = stream

    def attach_handler(self, stream: FakeStream | None) -> None:
        self.handler = stream
        self.handler_history.append(stream)

    async def seal_async(self) -> RecordingInfo:
        return self.seal()

    def seal(self) -> RecordingInfo:
        self.sealed = True
        data = b"RIFF-fake-" + self.call_id.encode()
        self.path.write_bytes(data)
        return RecordingInfo(self.call_id, self.path, hashlib.sha256(data).hexdigest(), 1.5,
                             len(data), False)


class FakeMedia:
    """Matches MediaEngine's constructor and methods."""

    instances: list[FakeMedia] = []

    def __init__(self, *, bind: str, port_min: int, port_max: int, ptime: int = 20,
                 recordings_dir: Path, on_audio=None, on_dtmf=None) -> None:
        self.bind, self.port_min, self.port_max = bind, port_min, port_max
        self.recordings_dir = recordings_dir
        self.on_dtmf = on_dtmf
        self.streams: list[FakeStream] = []
        self.recordings: dict[str, FakeRecording] = {}
        self.bridges: list[tuple[FakeStream, FakeStream]] = []
        self.unbridged: list[FakeStream] = []
        self.started = self.stopped = False
        self.recovered: list[RecordingInfo] = []
        self.pool_limit: int | None = None
        FakeMedia.instances.append(self)

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    def allocate(self) -> FakeStream:
        if self.pool_limit is not None and sum(not s.closed for s in self.streams) >= self.pool_limit:
            raise MediaError("RTP port pool exhausted")
        s = FakeStream(self.port_min + 2 * len(self.streams))
        self.streams.append(s)
        return s

    def create_recording(self, call_id: str) -> FakeRecording:
        r = FakeRecording(call_id, self.recordings_dir / f"{call_id}.wav")
        self.recordings[call_id] = r
        return r

    def recover_recordings(self) -> list[RecordingInfo]:
        return list(self.recovered)

    def bridge(self, a: FakeStream, b: FakeStream) -> None:
        self.bridges.append((a, b))

    def unbridge(self, a: FakeStream) -> None:
        self.unbridged.append(a)
