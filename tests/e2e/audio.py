"""Bit-exact comparison of sent and recorded audio (see harness.speech.frames_in_order)."""

from harness.speech import frames_in_order as frames_found_in_order

__all__ = ["frames_found_in_order"]
