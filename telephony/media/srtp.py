"""SRTP and SRTCP (RFC 3711) for one RTP stream, by libsrtp (through ``pylibsrtp``).

Keys come from SDES (RFC 4568, :mod:`telephony.sip.sdp`): each side puts its own master
key and salt in its ``a=crypto`` line and protects what it sends with it, so a stream
holds two libsrtp sessions: ``tx`` with our key, ``rx`` with the far end's.

What is dropped and counted (never raised: a forged packet costs one failed HMAC check):

* ``replayed``: a packet whose index libsrtp has already seen, or one older than the
  replay window (128 packets, libsrtp's default): a captured packet sent again.
* ``forged``: the authentication tag does not match (wrong key, altered packet, noise).
* ``malformed``: too short to be SRTP, or anything else libsrtp refuses.

Recordings and transcription are fed from the decrypted packets (the stream's receive
path after :meth:`SrtpContext.unprotect`), so they hold the same audio as for plain RTP.

Cost: ``Session.protect``/``unprotect`` allocate a cffi length cell and copy through a
buffer object on every call (~4-5 us a packet on this machine, most of it not crypto), so
the per-packet path calls libsrtp's ``srtp_protect``/``srtp_unprotect`` through the same
library's cffi binding with one preallocated buffer per context; the sessions, policies
and key handling stay pylibsrtp's. If that binding is not there (another pylibsrtp), the
public methods are used. The packet goes in and out by slicing a buffer view of that
memory (``view[0:n] = packet``, ``view[0:m]``: one copy each way, ~0.1 us, where
``ffi.memmove``/``ffi.unpack`` took ~0.2 us each), with no helper call in between: per
packet ~1.7 us where libsrtp's own work is ~1.1 us (AES_CM_128_HMAC_SHA1_80, 172-byte
packets, ``bench/srtp_cpu.py --per-packet``). ``bench/srtp_cpu.py`` measures a whole
bridged, recorded call against plain RTP.
"""

from __future__ import annotations

from pylibsrtp import Error, Policy, Session

from .errors import MediaError

try:  # the per-packet fast path (see the module docstring)
    from pylibsrtp._binding import ffi as _ffi
    from pylibsrtp._binding import lib as _lib
except ImportError:  # pragma: no cover - another pylibsrtp layout: public API only
    _ffi = _lib = None
_BUF = 2048  # the largest packet the fast path takes (a longer one is malformed for us)

_OK = 0
_REPLAY = {9, 10, 26}  # srtp_err_status_replay_fail, replay_old, pkt_idx_old
_AUTH = 7  # srtp_err_status_auth_fail
_TRAILER = 16 + 128 + 4  # libsrtp's largest tag + MKI + SRTCP index

__all__ = ["KEY_LENGTHS", "SrtpContext"]

_PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    "AEAD_AES_256_GCM": Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}
KEY_LENGTHS = {"AES_CM_128_HMAC_SHA1_80": 30, "AES_CM_128_HMAC_SHA1_32": 30,
               "AEAD_AES_128_GCM": 28, "AEAD_AES_256_GCM": 44}
"""Crypto suite -> master key + master salt length in bytes (the SDES ``inline:`` key)."""


class SrtpContext:
    """Protect what a stream sends, unprotect what it receives (RTP and RTCP)."""

    __slots__ = ("forged", "local_key", "malformed", "remote_key", "replayed", "suite",
                 "_buf", "_len", "_rx", "_rx_ctx", "_tx", "_tx_ctx", "_view")

    def __init__(self, suite: str, *, local_key: bytes, remote_key: bytes) -> None:
        """``local_key`` protects what we send (the key in our ``a=crypto``);
        ``remote_key`` checks and decrypts what the far end sends (the key in its)."""
        profile = _PROFILES.get(suite)
        if profile is None:
            raise MediaError(f"unsupported SRTP crypto suite {suite!r}")
        n = KEY_LENGTHS[suite]
        for name, key in (("local", local_key), ("remote", remote_key)):
            if not isinstance(key, bytes) or len(key) != n:
                raise MediaError(f"{name} SRTP key for {suite} must be {n} bytes")
        self.suite = suite
        self.local_key = local_key
        self.remote_key = remote_key
        self._tx = Session(Policy(key=local_key, ssrc_type=Policy.SSRC_ANY_OUTBOUND,
                                  srtp_profile=profile))
        self._rx = Session(Policy(key=remote_key, ssrc_type=Policy.SSRC_ANY_INBOUND,
                                  srtp_profile=profile))
        self.replayed = 0
        """Packets dropped by the replay check (already seen, or older than the window)."""
        self.forged = 0
        """Packets dropped because their authentication tag did not match."""
        self.malformed = 0
        """Packets libsrtp could not even try (too short, bad header)."""
        if _ffi is not None:
            # libsrtp works in place: room for the largest packet plus what it appends
            self._buf = _ffi.new("char[]", _BUF + _TRAILER)
            self._view = _ffi.buffer(self._buf)
            self._len = _ffi.new("int *")
            self._tx_ctx = self._tx._srtp[0]
            self._rx_ctx = self._rx._srtp[0]
        else:  # pragma: no cover
            self._buf = self._view = self._len = self._tx_ctx = self._rx_ctx = None

    # protect/unprotect are the per-packet path (100 calls a second per leg each way):
    # kept flat, with libsrtp's functions bound as default arguments, since each Python
    # call or global lookup here costs about as much as a tenth of the crypto.
    def protect(self, packet: bytes, _protect: object = getattr(_lib, "srtp_protect", None)
                ) -> bytes | None:
        """An RTP packet, encrypted and authenticated; None if libsrtp refuses it (e.g. a
        sequence number it already protected) or it is longer than 2,048 bytes, counted
        in ``malformed``."""
        view = self._view
        n = len(packet)
        if view is None or n > _BUF:
            return self._protect_public(packet)
        view[0:n] = packet
        length = self._len
        length[0] = n
        if _protect(self._tx_ctx, self._buf, length) != _OK:  # type: ignore[operator]
            self.malformed += 1
            return None
        return view[0:length[0]]

    def _protect_public(self, packet: bytes) -> bytes | None:
        if self._view is not None:  # too long for the fast path's buffer
            self.malformed += 1
            return None
        try:  # pragma: no cover - public API
            return self._tx.protect(packet)
        except (Error, ValueError):  # pragma: no cover
            self.malformed += 1
            return None

    def protect_rtcp(self, packet: bytes) -> bytes:
        """An RTCP compound packet as SRTCP."""
        return self._tx.protect_rtcp(packet)

    def unprotect(self, packet: bytes,
                  _unprotect: object = getattr(_lib, "srtp_unprotect", None)) -> bytes | None:
        """The RTP packet inside an SRTP one, or None when it is dropped (counted)."""
        view = self._view
        if view is not None:
            n = len(packet)
            if n > _BUF + _TRAILER:  # (a protected 2,048-byte packet still fits)
                self.malformed += 1
                return None
            view[0:n] = packet
            length = self._len
            length[0] = n
            rc = _unprotect(self._rx_ctx, self._buf, length)  # type: ignore[operator]
            if rc == _OK:
                return view[0:length[0]]
            if rc in _REPLAY:
                self.replayed += 1
            elif rc == _AUTH:
                self.forged += 1
            else:
                self.malformed += 1
            return None
        try:  # pragma: no cover - public API
            return self._rx.unprotect(packet)
        except Error as exc:
            self._count(exc)
        except ValueError:  # longer than libsrtp's buffer
            self.malformed += 1
        return None

    def unprotect_rtcp(self, packet: bytes) -> bytes | None:
        """The RTCP inside an SRTCP packet, or None when it is dropped (counted)."""
        try:
            return self._rx.unprotect_rtcp(packet)
        except Error as exc:
            self._count(exc)
        except ValueError:
            self.malformed += 1
        return None

    def _count(self, exc: Error) -> None:
        text = str(exc)
        if text.startswith("replay check failed") or "index is too old" in text:
            self.replayed += 1
        elif text == "authentication failure":
            self.forged += 1
        else:
            self.malformed += 1
