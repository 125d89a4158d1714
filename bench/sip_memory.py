"""Python heap per SIP call in the sans-IO core, measured with tracemalloc (no sockets).

Two user agents wired in memory (as ``tests/sip/test_ua_pair.py`` does) carry ``--calls``
calls: INVITE (with an SDP offer) / 100 / 200 (SDP answer) / ACK, then BYE / 200, all
at one instant. What the agents still hold afterwards is what a finished call costs
while its transactions absorb retransmissions (RFC 3261 timers: 64*T1 = 32 s for the
INVITE server transaction's Timer L, the BYE's Timer J and the UAC's Timer M), i.e.
what ~30 calls/s x 32 s of finished calls weigh on the engine. Then the clock is
advanced past every timer and the remainder (should be ~0) is printed.

    .venv/bin/python bench/sip_memory.py --calls 1000
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from telephony.sip.events import InviteReceived  # noqa: E402
from telephony.sip.ua import UserAgent  # noqa: E402

A = ("10.0.0.1", 5060)
B = ("10.0.0.2", 5060)
SDP = (b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
       b"m=audio 40000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
       b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1000)
    args = ap.parse_args()
    a, b = UserAgent(host=A[0], port=A[1]), UserAgent(host=B[0], port=B[1])

    def shuttle(now: float) -> None:
        for _ in range(50):
            moved = False
            for src, src_addr, dst in ((a, A, b), (b, B, a)):
                for data, _dest in src.datagrams_to_send():
                    dst.receive(data, src_addr, now)
                    moved = True
            if not moved:
                return

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for _ in range(args.calls):
        s = a.invite("sip:999@10.0.0.2", body=SDP, now=0.0)
        shuttle(0.0)
        inv = [e for e in b.events() if isinstance(e, InviteReceived)][0]
        b.respond(inv.session, 200, body=SDP, now=0.0)
        shuttle(0.0)
        a.bye(s, 0.0)
        shuttle(0.0)
        a.events()
        b.events()
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    snap = tracemalloc.take_snapshot()
    now = 0.0
    while True:
        d = [x for x in (a.next_deadline(), b.next_deadline()) if x is not None]
        if not d:
            break
        now = min(d)
        a.handle_timers(now)
        b.handle_timers(now)
        shuttle(now)
    a.events()
    b.events()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] - base
    print(f"{args.calls} finished calls, both agents: {held / args.calls / 1024:.1f} KiB per call "
          f"held while transactions absorb; {after / args.calls / 1024:.2f} KiB per call after "
          f"every timer ran (t = {now:.1f} s)")
    for st in snap.statistics("lineno")[:8]:
        print("  ", st)


if __name__ == "__main__":
    main()
