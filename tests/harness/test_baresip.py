"""baresip as a headless phone behind Kamailio: registers, auto-answers, sends its WAV, hangs up on command."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from harness import scenarios, speech
from harness.baresip import Baresip
from harness.kamailio import Kamailio
from harness.sipp import RtpCapture, Sipp

pytestmark = pytest.mark.realparts


def test_baresip_answers_plays_and_hangs_up(kamailio: Kamailio, tmp_path: Path) -> None:
    """A SIPp caller reaches baresip through Kamailio; baresip sends its tone as PCMU RTP and its
    ctrl_tcp 'hangup' sends the BYE the caller is waiting for."""
    tone = speech.tone_clip(700.0, 3.0, "PCMU", tmp_path / "t.pcap")
    wav = speech.write_wav(tmp_path / "t.wav", np.concatenate([tone.pcm, np.zeros(8000 * 20, np.int16)]))
    with Baresip(user="hb", registrar=kamailio.addr, domain=kamailio.domain, audio=wav,
                 codecs="PCMU") as phone:
        info = phone.command("reginfo")
        assert info["ok"] and "sip:hb@controlroom.local" in info["data"]
        with RtpCapture(list(range(phone.rtp_min, phone.rtp_max + 1))) as cap, \
                Sipp(scenarios.caller(dialled="hb", codecs=("PCMU",), hangup="remote",
                                      wait_bye_ms=20000),
                     target=kamailio.addr, name="caller") as cs:
            time.sleep(2.0)
            assert cs.alive(), cs.diagnostics()
            assert phone.command("hangup")["ok"]
            assert cs.wait(15) == 0, cs.diagnostics() + phone.log_text()
            time.sleep(0.2)
            cap.stop()
        sent = [c.rtp for c in cap.packets() if phone.rtp_min <= c.src[1] <= phone.rtp_max]
        assert len(sent) > 50 and {p.pt for p in sent} == {0}
        assert [p.seq for p in sent] == list(range(sent[0].seq, sent[0].seq + len(sent)))
        assert "Call established" in phone.log_text()
