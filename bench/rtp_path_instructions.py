"""Instructions per RTP stream-second through the real media path, counted by callgrind.

Wall-clock and CPU-time figures swing with whatever else runs on a shared machine;
callgrind's instruction count does not, so this is the figure to compare before and
after a change to the hot path.

The harness (``--run``) builds ``--calls`` calls the way the engine carries them: per
call a caller leg (PCMA) and a handler leg (PCMU) on one :class:`MediaEngine`, bridged
(A-law <-> mu-law by ``bytes.translate``) and recorded (stereo WAV through the writer
thread). Two far ends per call are plain UDP sockets in the same process that send one
20 ms packet per tick (a pre-encoded varying signal, A-law or mu-law) and drain what
the engine sends them. Then the engine's real tick (``MediaEngine._tick``: epoll read,
batch decode, jitter buffer, transcode, send, recorder) runs ``--ticks`` times, back to
back (no sleeping: the count does not depend on timing).

The driver (default) runs the harness under ``valgrind --tool=callgrind`` four times
(in parallel, each on its own ports):
engine with T1 and T2 ticks, and the far ends alone (engine streams allocated but never
ticked, far ends sending to each other) with T1 and T2 ticks. Start-up cancels in each
difference, the far ends' own cost is subtracted, and what is left is divided by the
engine's stream-seconds (2 legs x calls x ticks x 20 ms):

    .venv/bin/python bench/rtp_path_instructions.py --calls 20 --ticks 250 500

Callgrind counts user-space instructions only: the kernel's share of ``sendto`` /
``recvfrom`` / ``epoll_wait`` is not in the figure. ``--profile`` keeps the callgrind
file of the larger engine run for ``callgrind_annotate``. ``--heap`` instead prints the
Python heap per call (tracemalloc) after T2 ticks.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from telephony.media import Codec, MediaEngine  # noqa: E402
from telephony.media.g711 import alaw_encode, ulaw_encode  # noqa: E402
from telephony.runtime import tune_gc  # noqa: E402

_HDR = struct.Struct("!BBHII")


def _signal(frames: int, seed: int) -> list[np.ndarray]:
    """Speech-like 16-bit frames (tone plus noise), so no payload is trivially constant."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames * 160) / 8000.0
    x = 6000 * np.sin(2 * np.pi * (300 + 50 * seed) * t) + rng.normal(0, 1500, t.size)
    pcm = np.clip(x, -32768, 32767).astype(np.int16)
    return [pcm[i * 160:(i + 1) * 160] for i in range(frames)]


async def harness(calls: int, ticks: int, far_only: bool, port_min: int,
                  heap: bool = False) -> None:
    with tempfile.TemporaryDirectory() as d:
        if heap:
            gc.collect()
            tracemalloc.start()
        eng = MediaEngine(bind="127.0.0.1", port_min=port_min,
                          port_max=port_min + 8 * calls + 100, recordings_dir=Path(d))
        eng.disk.start()  # the recorder's writer thread (the clock itself is not started)
        alaw = [alaw_encode(f) for f in _signal(50, 1)]
        ulaw = [ulaw_encode(f) for f in _signal(50, 2)]
        far: list[tuple[socket.socket, tuple[str, int], int, list[bytes]]] = []
        for i in range(calls):
            a, b = eng.allocate(), eng.allocate()
            fa = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            fb = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for s in (fa, fb):
                s.bind(("127.0.0.1", 0))
                s.setblocking(False)
            a.configure(remote=fa.getsockname(), codec=Codec.PCMA, dtmf_pt=101)
            b.configure(remote=fb.getsockname(), codec=Codec.PCMU, dtmf_pt=101)
            eng.bridge(a, b)
            r = eng.create_recording(f"bench-{i}")
            r.attach_caller(a)
            r.attach_handler(b)
            if far_only:  # same sends and drains, to each other instead of the engine
                far.append((fa, fb.getsockname(), 8, alaw))
                far.append((fb, fa.getsockname(), 0, ulaw))
            else:
                far.append((fa, ("127.0.0.1", a.local_port), 8, alaw))
                far.append((fb, ("127.0.0.1", b.local_port), 0, ulaw))
        tune_gc()  # as `controlroom serve` does once started (start-up objects frozen)
        ssrc = 0x1234
        for t in range(ticks):
            hdr_seq, hdr_ts = t & 0xFFFF, (160 * t) & 0xFFFFFFFF
            for s, dest, pt, payloads in far:
                s.sendto(_HDR.pack(0x80, pt, hdr_seq, hdr_ts, ssrc) + payloads[t % 50], dest)
            if not far_only:
                eng._tick(t)
            for s, _dest, _pt, _p in far:
                try:
                    while True:
                        s.recv(2048)
                except BlockingIOError:
                    pass
        if heap:
            gc.collect()
            print(f"media heap per call after {ticks} ticks: "
                  f"{tracemalloc.get_traced_memory()[0] / calls / 1024:.1f} KiB "
                  "(engine and far-end sockets; kernel buffers not included)")
            tracemalloc.stop()
        if not far_only:
            received = sum(st.stats.packets_in for st in eng.streams)
            if received < 0.95 * 2 * calls * ticks:
                raise SystemExit(f"engine received {received} of {2 * calls * ticks} packets")
        await eng.stop()
        for s, _dest, _pt, _p in far:
            s.close()


def _callgrind(args: argparse.Namespace, ticks: int, far_only: bool,
               out: Path) -> subprocess.Popen[str]:
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
           sys.executable, __file__, "--run", "--calls", str(args.calls),
           "--ticks", str(ticks), "0", "--port-min",
           str(args.port_min + (1000 if far_only else 0) + (2000 if ticks == args.ticks[1] else 0))]
    if far_only:
        cmd.append("--far-only")
    if args.uvloop:
        cmd.append("--uvloop")
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def _collected(p: subprocess.Popen[str]) -> int:
    _out, err = p.communicate()
    m = re.search(r"Collected : (\d+)", err)
    if p.returncode != 0 or m is None:
        sys.exit(f"callgrind run failed ({p.returncode}):\n{err[-3000:]}")
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20, help="bridged, recorded calls (2 legs each)")
    ap.add_argument("--ticks", type=int, nargs=2, default=[250, 500], metavar=("T1", "T2"))
    ap.add_argument("--port-min", type=int, default=20000,
                    help="engine ports from here (below the kernel's ephemeral range, where "
                         "the far ends' sockets are; each parallel run adds 1000 or 2000)")
    ap.add_argument("--profile", type=Path, help="keep the larger engine run's callgrind file here")
    ap.add_argument("--uvloop", action="store_true", help="run the harness on uvloop")
    ap.add_argument("--heap", action="store_true",
                    help="no callgrind: run T2 ticks natively, print the Python heap per call "
                         "(tracemalloc; T2 >= 600 fills the jitter buffers' duplicate window)")
    ap.add_argument("--run", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--far-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.heap:
        asyncio.run(harness(args.calls, args.ticks[1], False, args.port_min, heap=True))
        return
    if args.run:
        if args.uvloop:
            import uvloop
            uvloop.install()
        asyncio.run(harness(args.calls, args.ticks[0], args.far_only, args.port_min))
        return
    t1, t2 = args.ticks
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        runs = [_callgrind(args, t, far, tmp / f"{'f' if far else 'e'}{t}")
                for far in (False, True) for t in (t1, t2)]  # (in parallel: own ports each)
        e1, e2, f1, f2 = (_collected(p) for p in runs)
        if args.profile:
            (tmp / f"e{t2}").replace(args.profile)
    stream_s = 2 * args.calls * (t2 - t1) * 0.020
    engine = (e2 - e1) - (f2 - f1)
    print(f"{args.calls} calls ({2 * args.calls} legs), ticks {t1} -> {t2}: "
          f"engine {e2 - e1:,} Ir, far ends {f2 - f1:,} Ir")
    print(f"instructions per stream-second: {engine / stream_s / 1e6:.2f} M "
          f"(per leg per tick: {engine / (2 * args.calls * (t2 - t1)):,.0f})")


if __name__ == "__main__":
    main()
