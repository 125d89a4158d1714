"""Media layer: G.711, RTP/RTCP, jitter buffer, DTMF, the shared media clock, recordings.

Contract with the signalling engine: ``/work/notes/media_api.md``. Typical use::

    media = MediaEngine(bind="127.0.0.1", port_min=20000, port_max=29999,
                        recordings_dir=path, on_audio=..., on_dtmf=...)
    await media.start()                      # the one 20 ms clock of the process
    for info in media.recover_recordings():  # .part files left by a crash
        ...
    media.preload("tone")                    # optional: check prompts at start-up
    s = media.allocate()                     # sync; s.local_port goes in the SDP answer
    s.configure(remote=("192.0.2.7", 4000), codec=Codec.PCMA, dtmf_pt=101, ptime=20)
    s.set_direction("sendrecv")
    rec = media.create_recording(call_id)    # at answer
    rec.attach_caller(s)
    s.play("tone")                           # queue tone; or "silence" or a WAV path
    media.bridge(s, handler_stream); rec.attach_handler(handler_stream)
    media.unbridge(s)                        # both back to their last play() source
    s.close(); info = await rec.seal_async() # (seal() is the synchronous form)
    await media.stop()

Modules: ``g711`` (tables), ``rtp``/``rtcp`` (sans-IO packets), ``jitter`` (pure playout
buffer), ``dtmf`` (RFC 4733), ``clock``, ``stream`` (RtpStream: who is heard - the SDP
address only), ``ports`` (random port choice, released ports rest), ``prompts``,
``recording``, ``session`` (MediaEngine).
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
