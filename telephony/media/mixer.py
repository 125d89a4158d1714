"""Mixing for supervisor listen, whisper and barge: what one listener hears.

A :class:`Mix` stands in for a stream's bridge peer: the stream's send path reads the
peer's ``rx_frame`` (16-bit PCM) and ``rx_raw`` (the received G.711 codes, forwarded
untouched when the law matches) each tick, so a mix only has to present the same two
attributes. :meth:`telephony.media.session.MediaEngine.mix` installs one; the engine's
tick updates every mix after all streams have pulled their frame and before any sends,
so the listener hears this tick's audio from each source (no added delay).

With one live source a mix passes that source's frame (and raw codes) through, so a
listener of one party hears them bit for bit; with more it sums the PCM in 32 bits and
clips to 16 (no attenuation: two people rarely talk at once, and halving every voice
would make each quieter than in a plain call).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .jitter import silence

Pcm = npt.NDArray[np.int16]


class Mix:
    """The sum of what ``sources`` received this tick, presented as a bridge peer."""

    __slots__ = ("sources", "rx_frame", "rx_raw", "peer", "closed", "_quiet")

    def __init__(self, sources: Sequence[Any], frame_samples: int) -> None:
        self.sources = list(sources)
        """Streams whose received audio is summed (closed ones are skipped)."""
        self._quiet: Pcm = silence(frame_samples)
        self.rx_frame: Pcm = self._quiet
        """This tick's mixed PCM (what the listener is sent)."""
        self.rx_raw: tuple[int, bytes] | None = None
        """The single live source's received codes (pass-through), else None."""
        self.peer: Any = None   # a mix is nobody's bridge partner (``unbridge`` looks)
        self.closed = False

    def update(self) -> None:
        """Take this tick's frames from the sources (call after every stream pulled)."""
        live = [s for s in self.sources if not s.closed]
        if not live:
            self.rx_frame, self.rx_raw = self._quiet, None
        elif len(live) == 1:
            self.rx_frame, self.rx_raw = live[0].rx_frame, live[0].rx_raw
        else:
            acc = live[0].rx_frame.astype(np.int32)
            for s in live[1:]:
                acc += s.rx_frame
            self.rx_frame = np.clip(acc, -32768, 32767).astype(np.int16)
            self.rx_raw = None


class Heard:
    """A recording channel of what ``listener`` hears from ``talker`` and, while it is
    mixed into the listener, from ``extra`` (a barging supervisor).

    Presents what a recording reads of a stream (``rx_frame``, ``closed`` and, for the
    tail at seal, ``_jb``), computed when read: the recording's tick comes after every
    stream pulled its frame, so ``talker.rx_frame`` and ``extra.rx_frame`` are this
    tick's. ``extra`` is added only while the listener's peer is a :class:`Mix` with
    ``extra`` among its sources, i.e. while the listener really hears it: after the mode
    changes, a hold or the supervisor leaving, the channel is the talker alone again
    even before anyone re-attaches it.
    """

    __slots__ = ("talker", "listener", "extra")

    def __init__(self, talker: Any, listener: Any, extra: Any) -> None:
        self.talker, self.listener, self.extra = talker, listener, extra

    def hears_extra(self) -> bool:
        peer = self.listener.peer
        return (isinstance(peer, Mix) and self.extra in peer.sources
                and not self.extra.closed and not self.listener.closed)

    @property
    def rx_frame(self) -> Pcm:
        t = self.talker
        if not self.hears_extra():
            return t.rx_frame  # type: ignore[no-any-return]
        if t.closed:
            return self.extra.rx_frame  # type: ignore[no-any-return]
        acc = t.rx_frame.astype(np.int32)
        acc += self.extra.rx_frame
        return np.clip(acc, -32768, 32767).astype(np.int16)

    @property
    def rx_raw(self) -> tuple[int, bytes] | None:
        return None if self.hears_extra() else self.talker.rx_raw  # type: ignore[no-any-return]

    @property
    def closed(self) -> bool:
        return bool(self.talker.closed)

    @property
    def _jb(self) -> Any:
        return self.talker._jb
