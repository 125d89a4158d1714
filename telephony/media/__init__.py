"""Media layer: G.711, RTP, jitter buffer, DTMF, the shared media clock and recordings.

See ``/work/notes/media_api.md`` for the contract with the signalling engine.
"""

from .errors import MediaError, RtpError
from .recording import Recording, RecordingInfo
from .session import Codec, MediaEngine, RtpStats, RtpStream

__all__ = ["Codec", "MediaEngine", "MediaError", "Recording", "RecordingInfo", "RtpError",
           "RtpStats", "RtpStream", "bridge", "unbridge"]


def bridge(a: RtpStream, b: RtpStream) -> None:
    """``MediaEngine.bridge`` for two streams of the same engine."""
    a._engine.bridge(a, b)


def unbridge(a: RtpStream) -> None:
    """``MediaEngine.unbridge``."""
    a._engine.unbridge(a)
