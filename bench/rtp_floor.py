"""The floor under the engine's CPU per RTP stream-second: the kernel work alone.

Issue 15 asks for engine CPU <= 1.0 ms per RTP stream-second (``sip_load.py --calls 150
--rounds 1 --rate-start 10 --rate-max 10 --no-pyvoip --workers 1 --talk 6`` measured
2.2 ms). There a stream is one RTP socket of the engine (a caller's, or a handler leg's)
and a stream-second is one second of it: 50 packets of 172 bytes (G.711, 20 ms) received
with one ``recvfrom`` and 50 sent with one ``sendto`` to the far end (SIPp), the engine's
own ``epoll`` (timeout 0) naming the ready sockets on each 20 ms media-clock tick.

This builds (gcc, at run time, into a temporary directory) a relay in C that does only
that kernel work, and a far end in a second process (as SIPp is): ``--streams N`` relay
sockets, streams 2k and 2k+1 the two legs of a call; every 20 ms the far end sends one
172-byte RTP packet to each relay socket from its own socket, and on its 20 ms tick the
relay sends each leg what the other leg received, to the address it came from. Modes:

* ``a``: the engine's system calls: ``epoll_wait(0)`` passes, one ``recvfrom`` per packet
  and one ``sendto`` per packet, each on the stream's own socket.
* ``b``: batched: ``recvmmsg`` per ready stream socket, and all of a tick's packets in
  one ``sendmmsg`` from one socket (so sent from another port than the stream's: a far
  end that latches on the source port, symmetric RTP, would not accept that).
* ``c``: one socket for every stream: ``recvmmsg`` of everything, one ``sendmmsg`` per
  tick, streams told apart by the far end's address.
* ``py``: mode ``a``'s system calls from Python (``select.epoll``, ``socket.recvfrom`` /
  ``sendto``, a ``struct`` header per packet), no jitter buffer, no decoding, no
  recording: the least a pure-Python per-packet path costs.
* ``engine``: the service's ``MediaEngine`` carrying the same streams, bridged in pairs,
  each pair recorded (as ``sip_load.py``'s calls, without the SIP and the rest of the
  service): the media path's own cost, beside the floors above.

The relay's CPU (user + system, ``getrusage``) over a window of ``--seconds`` that starts
once every stream's far end was heard, divided by streams x window, is the figure;
printed per N as min / median / max over ``--rounds`` rounds (modes interleaved within a
round, so load drift hits each alike), with the load average, the far end's CPU, and the
ratio to the engine's ``--engine-ms``. The sum user + system is the scheduler's exact run
time; the split between them is sampled on the kernel's timer tick, so for a process that
runs in short bursts the "system, tick-sampled" figure is printed but not to be trusted.

``--far-end ignore`` (default) leaves what the relay sends queued unread at the far end,
as SIPp does in ``sip_load.py`` (its RTP socket sits full and the kernel drops there);
``--far-end drain`` reads it, as a real phone would (the relay's send then also queues
the packet and wakes the reader).

    .venv/bin/python bench/rtp_floor.py                      # N = 50 100 200, 3 rounds of 5 s
    .venv/bin/python bench/rtp_floor.py --far-end drain
    .venv/bin/python bench/rtp_floor.py --streams 5 --seconds 2 --rounds 1   # smoke

A round counts only if the relay received and sent at least 95 % of the packets of its
window (50 per stream per second); otherwise the run prints ``FAILED:`` lines saying why
and exits 1 (a far end that sent nothing, or quit early, cannot make a floor look low).
Without gcc it prints ``SKIPPED:`` and exits 77.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import loadcheck  # noqa: E402 - after the path set-up above

C_SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#define PKT 172
#define PERIOD_NS 20000000L
#define MAXN 4096
#define BATCH 64

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double cpu(double *sys) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    *sys = r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6;
}

static int udp_socket(void) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fd < 0) { perror("socket"); exit(2); }
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); exit(2); }
    return fd;
}

static int port_of(int fd) {
    struct sockaddr_in a;
    socklen_t l = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &l);
    return ntohs(a.sin_port);
}

static void next_tick(struct timespec *t) {
    t->tv_nsec += PERIOD_NS;
    if (t->tv_nsec >= 1000000000L) { t->tv_nsec -= 1000000000L; t->tv_sec++; }
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, t, NULL) == EINTR) {}
}

static void header(uint8_t *p, uint16_t seq, uint32_t ts, uint32_t ssrc) {
    p[0] = 0x80; p[1] = 8;
    p[2] = seq >> 8; p[3] = seq;
    p[4] = ts >> 24; p[5] = ts >> 16; p[6] = ts >> 8; p[7] = ts;
    p[8] = ssrc >> 24; p[9] = ssrc >> 16; p[10] = ssrc >> 8; p[11] = ssrc;
}

struct stream {        /* last payload received, where the far end is, our header state */
    int fd, latched, fresh;
    struct sockaddr_in peer;
    uint8_t last[PKT];
    uint16_t seq;
    uint32_t ts;
};

static struct stream S[MAXN];
static uint8_t out[MAXN][PKT];
static struct mmsghdr smsg[MAXN];
static struct iovec siov[MAXN];
static uint8_t rbuf[BATCH][2048];
static struct mmsghdr rmsg[BATCH];
static struct iovec riov[BATCH];
static struct sockaddr_in rfrom[BATCH];
static int by_port[65536];  /* mode c: far end's source port -> stream + 1 */
static struct epoll_event ev[MAXN];

static int relay(char mode, int n, double seconds, double wait) {
    int ep = epoll_create1(0), one = -1, latched = 0, assigned = 0;
    if (mode == 'b' || mode == 'c') one = udp_socket();
    printf("ports");
    for (int i = 0; i < n; i++) {
        S[i].fd = mode == 'c' ? one : udp_socket();
        S[i].seq = i * 7; S[i].ts = i * 160;
        if (mode != 'c') {
            struct epoll_event e = {.events = EPOLLIN, .data.u32 = i};
            epoll_ctl(ep, EPOLL_CTL_ADD, S[i].fd, &e);
            printf(" %d", port_of(S[i].fd));
        }
    }
    if (mode == 'c') {
        struct epoll_event e = {.events = EPOLLIN, .data.u32 = 0};
        epoll_ctl(ep, EPOLL_CTL_ADD, one, &e);
        printf(" %d", port_of(one));
    }
    printf("\n");
    fflush(stdout);
    for (int k = 0; k < BATCH; k++) {
        riov[k].iov_base = rbuf[k]; riov[k].iov_len = sizeof rbuf[k];
        rmsg[k].msg_hdr.msg_iov = &riov[k]; rmsg[k].msg_hdr.msg_iovlen = 1;
        rmsg[k].msg_hdr.msg_name = &rfrom[k];
    }
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    double start = now_s(), t0 = 0, u0 = 0, s0 = 0, end = 0;
    long rx = 0, tx = 0;
    for (;;) {
        next_tick(&t);
        double now = now_s();
        if (!t0 && (latched == n || now - start > wait)) {  /* the measured window starts */
            t0 = now; end = t0 + seconds; u0 = cpu(&s0); rx = tx = 0;
        }
        if (t0 && now >= end) break;
        /* receive: epoll (timeout 0) names the ready sockets; passes until none */
        for (int pass = 0; pass < 64; pass++) {
            int m = epoll_wait(ep, ev, MAXN, 0);
            if (m <= 0) break;
            for (int j = 0; j < m; j++) {
                int i = ev[j].data.u32;
                if (mode == 'a') {
                    struct sockaddr_in from;
                    socklen_t fl = sizeof from;
                    ssize_t r = recvfrom(S[i].fd, rbuf[0], sizeof rbuf[0], 0,
                                         (struct sockaddr *)&from, &fl);
                    if (r < 0) continue;
                    rx++;
                    if (!S[i].latched) { S[i].peer = from; S[i].latched = 1; latched++; }
                    if (r == PKT) { memcpy(S[i].last, rbuf[0], PKT); S[i].fresh = 1; }
                    continue;
                }
                for (;;) {
                    for (int k = 0; k < BATCH; k++) rmsg[k].msg_hdr.msg_namelen = sizeof rfrom[k];
                    int got = recvmmsg(mode == 'c' ? one : S[i].fd, rmsg, BATCH, MSG_DONTWAIT, NULL);
                    if (got <= 0) break;
                    for (int k = 0; k < got; k++) {
                        int s = i;
                        if (mode == 'c') {
                            int p = ntohs(rfrom[k].sin_port);
                            if (!by_port[p]) {
                                if (assigned >= n) continue;  /* a stranger */
                                by_port[p] = ++assigned;
                            }
                            s = by_port[p] - 1;
                        }
                        rx++;
                        if (!S[s].latched) { S[s].peer = rfrom[k]; S[s].latched = 1; latched++; }
                        if (rmsg[k].msg_len == PKT) { memcpy(S[s].last, rbuf[k], PKT); S[s].fresh = 1; }
                    }
                    if (got < BATCH) break;
                }
            }
        }
        /* send: each leg sends what the other leg received this tick (silence if nothing) */
        int q = 0;
        for (int i = 0; i < n; i++) {
            struct stream *s = &S[i], *p = &S[i ^ 1];
            s->ts += 160;
            if (!s->latched || (i ^ 1) >= n) continue;
            uint8_t *pkt = out[q];
            if (p->fresh) memcpy(pkt + 12, p->last + 12, PKT - 12);
            else memset(pkt + 12, 0xD5, PKT - 12);
            header(pkt, s->seq++, s->ts, 0x1000 + i);
            if (mode == 'a') {
                if (sendto(s->fd, pkt, PKT, 0, (struct sockaddr *)&s->peer, sizeof s->peer) == PKT)
                    tx++;
                continue;
            }
            siov[q].iov_base = pkt; siov[q].iov_len = PKT;
            smsg[q].msg_hdr.msg_iov = &siov[q]; smsg[q].msg_hdr.msg_iovlen = 1;
            smsg[q].msg_hdr.msg_name = &s->peer; smsg[q].msg_hdr.msg_namelen = sizeof s->peer;
            q++;
        }
        for (int i = 0; i < n; i++) S[i].fresh = 0;
        for (int k = 0; k < q;) {
            int sent = sendmmsg(one, smsg + k, q - k, 0);
            if (sent <= 0) break;
            tx += sent; k += sent;
        }
    }
    double s1 = 0, u1 = 0, window = 0;
    if (t0) { u1 = cpu(&s1); window = now_s() - t0; }
    printf("figures rx %ld tx %ld window %.6f user %.6f sys %.6f latched %d\n",
           rx, tx, window, u1 - u0, s1 - s0, latched);
    return 0;
}

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

static int far_end(int n, double seconds, int drain, char **ports, int nports) {
    int ep = epoll_create1(0);
    signal(SIGTERM, on_term);
    static int fds[MAXN];
    static struct sockaddr_in to[MAXN];
    uint8_t pkt[PKT], buf[2048];
    memset(pkt, 0xD5, sizeof pkt);
    for (int i = 0; i < n; i++) {
        fds[i] = udp_socket();
        to[i].sin_family = AF_INET;
        to[i].sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        to[i].sin_port = htons(atoi(ports[nports == 1 ? 0 : i]));
        if (drain) {
            struct epoll_event e = {.events = EPOLLIN, .data.u32 = i};
            epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &e);
        }
    }
    printf("far ports");
    for (int i = 0; i < n; i++) printf(" %d", port_of(fds[i]));
    printf("\n");
    fflush(stdout);
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    double begin = now_s(), end = begin + seconds, su, uu;
    long sent = 0, got = 0, errs = 0;
    uint16_t seq = 0;
    while (!stop && now_s() < end) {
        next_tick(&t);
        for (int i = 0; i < n; i++) {
            header(pkt, seq, seq * 160u, 0x2000 + i);
            if (sendto(fds[i], pkt, PKT, 0, (struct sockaddr *)&to[i], sizeof to[i]) == PKT) sent++;
            else errs++;
        }
        seq++;
        for (int pass = 0; drain && pass < 64; pass++) {
            int m = epoll_wait(ep, ev, MAXN, 0);
            if (m <= 0) break;
            for (int j = 0; j < m; j++)
                if (recv(fds[ev[j].data.u32], buf, sizeof buf, 0) > 0) got++;
        }
    }
    uu = cpu(&su);
    printf("far end sent %ld errors %ld received %ld user %.6f sys %.6f seconds %.6f\n",
           sent, errs, got, uu, su, now_s() - begin);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 6 && !strcmp(argv[1], "relay")) {
        int n = atoi(argv[3]);
        if (n < 1 || n > MAXN) return 2;
        return relay(argv[2][0], n, atof(argv[4]), atof(argv[5]));
    }
    if (argc >= 6 && !strcmp(argv[1], "far")) {
        int n = atoi(argv[2]);
        if (n < 1 || n > MAXN) return 2;
        return far_end(n, atof(argv[3]), atoi(argv[4]), argv + 5, argc - 5);
    }
    fprintf(stderr, "usage: floor relay a|b|c N SECONDS WAIT | floor far N SECONDS DRAIN PORT...\n");
    return 2;
}
"""

MODES = {
    "a": "C, recvfrom/sendto per packet, socket per stream (the engine's calls)",
    "b": "C, recvmmsg per ready socket + one sendmmsg per tick",
    "c": "C, one socket for all streams, recvmmsg + one sendmmsg per tick",
    "py": "Python, mode a's calls (epoll, recvfrom, sendto, struct header)",
    "engine": "our MediaEngine: streams bridged in pairs, each pair recorded",
}
PACKET = 172
PPS = 50  # packets per stream per second, each way (20 ms G.711)
SKIP = 77  # exit code: could not run (no gcc), not a figure


def build(work: Path) -> Path:
    """Compile the relay and far end (one binary) into ``work``; the compiler's words on error."""
    src = work / "rtp_floor.c"
    src.write_text(C_SOURCE)
    exe = work / "rtp_floor"
    out = subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(src)],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"gcc failed:\n{out.stderr[-2000:]}")
    return exe


def py_relay(n: int, seconds: float, wait: float) -> None:
    """Mode ``py``: the C relay's mode ``a`` written in Python (same output lines)."""
    hdr = struct.Struct("!BBHII")
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ep = select.epoll()
    by_fd = {s.fileno(): i for i, s in enumerate(socks)}
    for s in socks:
        ep.register(s.fileno(), select.EPOLLIN)
    print("ports " + " ".join(str(s.getsockname()[1]) for s in socks), flush=True)
    peer: list[tuple[str, int] | None] = [None] * n
    last: list[bytes | None] = [None] * n
    seq = [i * 7 for i in range(n)]
    ts = [i * 160 for i in range(n)]
    silent = b"\xd5" * (PACKET - 12)
    latched = rx = tx = 0
    start = deadline = time.monotonic()
    t0 = end = 0.0
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    while True:
        deadline += 0.020
        pause = deadline - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        now = time.monotonic()
        if not t0 and (latched == n or now - start > wait):
            t0, end, rx, tx = now, now + seconds, 0, 0
            r0 = resource.getrusage(resource.RUSAGE_SELF)
        if t0 and now >= end:
            break
        fresh: list[bytes | None] = [None] * n
        for _ in range(64):
            events = ep.poll(0)
            if not events:
                break
            for fd, _mask in events:
                i = by_fd[fd]
                try:
                    data, addr = socks[i].recvfrom(2048)
                except OSError:
                    continue
                rx += 1
                if peer[i] is None:
                    peer[i] = addr
                    latched += 1
                if len(data) == PACKET:
                    fresh[i] = data
        last = fresh
        for i in range(n):
            ts[i] = (ts[i] + 160) & 0xFFFFFFFF
            addr = peer[i]
            if addr is None or (i ^ 1) >= n:
                continue
            got = last[i ^ 1]
            packet = hdr.pack(0x80, 8, seq[i], ts[i], 0x1000 + i) + (got[12:] if got else silent)
            seq[i] = (seq[i] + 1) & 0xFFFF
            try:
                socks[i].sendto(packet, addr)
                tx += 1
            except OSError:
                pass
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    window = time.monotonic() - t0 if t0 else 0.0
    if not t0:
        r1 = r0
    print(f"figures rx {rx} tx {tx} window {window:.6f} user {r1.ru_utime - r0.ru_utime:.6f} "
          f"sys {r1.ru_stime - r0.ru_stime:.6f} latched {latched}", flush=True)


def engine_relay(n: int, seconds: float, wait: float) -> None:
    """Mode ``engine``: the service's media engine (``telephony.media.MediaEngine``, its
    one 20 ms clock, jitter buffers, G.711, a stereo recording per pair written by its
    disk thread) carrying the same streams; the far end's ports come on stdin (the SDP)."""
    import asyncio

    from harness.ports import free_rtp_range
    from telephony.media import Codec, MediaEngine

    async def run() -> None:
        lo, hi = free_rtp_range(4 * n + 64)
        with tempfile.TemporaryDirectory(prefix="rtp-floor-rec-") as rec:
            eng = MediaEngine(bind="127.0.0.1", port_min=lo, port_max=hi, recordings_dir=Path(rec))
            streams = [eng.allocate() for _ in range(n)]
            print("ports " + " ".join(str(s.local_port) for s in streams), flush=True)
            line = await asyncio.to_thread(sys.stdin.readline)
            far = [int(p) for p in line.split()[2:]]
            if len(far) != n:
                print(f"figures rx 0 tx 0 window 0 user 0 sys 0 latched 0 (far ports: {line!r})",
                      flush=True)
                return
            for s, port in zip(streams, far, strict=True):
                s.configure(remote=("127.0.0.1", port), codec=Codec.PCMA, dtmf_pt=101)
            for i in range(0, n - 1, 2):
                eng.bridge(streams[i], streams[i + 1])
                r = eng.create_recording(f"floor-{i}")
                r.attach_caller(streams[i])
                r.attach_handler(streams[i + 1])
            await eng.start()
            for _ in range(int(wait / 0.02)):  # the window starts once every far end is heard
                if all(s.stats.packets_in for s in streams):
                    break
                await asyncio.sleep(0.02)
            heard = sum(s.stats.packets_in > 0 for s in streams)
            in0 = sum(s.stats.packets_in for s in streams)
            out0 = sum(s.stats.packets_out for s in streams)
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            tick0 = eng.clock.busy_cpu
            await asyncio.sleep(seconds)
            r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            tick = eng.clock.busy_cpu - tick0
            rx = sum(s.stats.packets_in for s in streams) - in0
            tx = sum(s.stats.packets_out for s in streams) - out0
            print(f"figures rx {rx} tx {tx} window {t1 - t0:.6f} "
                  f"user {r1.ru_utime - r0.ru_utime:.6f} sys {r1.ru_stime - r0.ru_stime:.6f} "
                  f"latched {heard} tick {tick:.6f}", flush=True)
            await eng.stop()

    asyncio.run(run())


def fields(line: str) -> dict[str, float]:
    """``word number word number ...`` after the first word(s) -> {word: number}."""
    words = line.split()
    out: dict[str, float] = {}
    for k, v in zip(words, words[1:], strict=False):
        try:
            out[k] = float(v)
        except ValueError:
            continue
    return out


def one_round(exe: Path, mode: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """One relay + far-end pair; the relay's figures, the far end's, and why it fails."""
    wait = 3.0  # the window starts once every far end was heard, or after this
    if mode in ("py", "engine"):
        cmd = [sys.executable, str(Path(__file__).resolve()), f"--{mode}-relay", str(n),
               str(args.seconds), str(wait)]
    else:
        cmd = [str(exe), "relay", mode, str(n), str(args.seconds), str(wait)]
    relay = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    far = None
    sender_s = args.seconds + wait + 1.0 if args.sender_seconds is None else args.sender_seconds
    try:
        assert relay.stdout is not None
        first = relay.stdout.readline().split()
        if not first or first[0] != "ports":
            relay.kill()
            relay.wait(timeout=10)
            err = " ".join(first) + relay.stdout.read()
            return {"failed": f"the relay did not start: {err.strip()[-500:]}"}
        far = subprocess.Popen([str(exe), "far", str(n), str(sender_s),
                                "1" if args.far_end == "drain" else "0", *first[1:]],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        limit = args.seconds + wait + 15
        assert far.stdout is not None
        far_ports = far.stdout.readline()  # "far ports ...": the engine sends there (SDP)
        assert relay.stdin is not None
        try:
            relay.stdin.write(far_ports)
            relay.stdin.close()
        except BrokenPipeError:  # a C relay never reads it, and may be gone already
            pass
        guard = threading.Timer(limit, relay.kill)  # a hung relay ends, and read() with it
        guard.start()
        try:
            rest = relay.stdout.read()  # to its end (lines readline buffered included)
        finally:
            guard.cancel()
        relay.wait(timeout=10)
        if far.poll() is None:
            far.terminate()  # the window is over: it prints its figures and exits
        far.wait(timeout=limit)
        fout = far.stdout.read()  # (after readline: what it buffered is read from it too)
    finally:
        for p in (relay, far):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    r = fields(next((ln for ln in rest.splitlines() if ln.startswith("figures")), ""))
    f = fields(next((ln for ln in fout.splitlines() if ln.startswith("far end")), ""))
    out: dict[str, Any] = {"relay": r, "far": f, "load": os.getloadavg()[0]}
    window = r.get("window", 0.0)
    expected = n * PPS * window
    paired = n // 2 * 2  # an odd stream out has no other leg to send it anything
    expected_tx = paired * PPS * window
    why = []
    if relay.returncode != 0 or not r:
        why.append(f"the relay exited {relay.returncode} without figures: {rest.strip()[-300:]}")
    if far.returncode != 0 or not f:
        why.append(f"the far end exited {far.returncode} without figures: {fout.strip()[-300:]}")
    if r and (window <= 0 or r["rx"] < args.min_share * expected):
        why.append(f"the relay received {r.get('rx', 0):.0f} of the {expected:.0f} packets of "
                   f"its {window:.1f} s window ({n} streams x {PPS}/s; heard {r.get('latched', 0):.0f} "
                   f"of {n} far ends; the far end sent {f.get('sent', 0):.0f})")
    elif r and r["tx"] < args.min_share * expected_tx:
        why.append(f"the relay sent {r['tx']:.0f} of the {expected_tx:.0f} packets of its "
                   f"{window:.1f} s window")
    if why:
        out["failed"] = "; ".join(why)
    elif window > 0:
        out["ms"] = (r["user"] + r["sys"]) / (n * window) * 1000
        out["sys_ms"] = r["sys"] / (n * window) * 1000
        if "tick" in r:  # mode engine: CPU of the media clock's ticks (as sip_load.py's)
            out["tick_ms"] = r["tick"] / (n * window) * 1000
        out["far_ms"] = (f["user"] + f["sys"]) / (n * max(f.get("seconds", 0.0), 1e-9)) * 1000
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="CPU floor of an RTP relay: kernel work alone")
    ap.add_argument("--py-relay", nargs=3, metavar=("N", "SECONDS", "WAIT"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--engine-relay", nargs=3, metavar=("N", "SECONDS", "WAIT"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--streams", type=int, nargs="+", default=[50, 100, 200],
                    help="relay sockets (streams); 2 per bridged call")
    ap.add_argument("--seconds", type=float, default=5.0, help="measured window per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", default="a,b,c,py,engine",
                    help="comma-separated: a, b, c, py, engine")
    ap.add_argument("--far-end", choices=("ignore", "drain"), default="ignore",
                    help="leave the relay's packets unread at the far end (SIPp) or read them")
    ap.add_argument("--engine-ms", type=float, default=2.2,
                    help="the engine's measured CPU per stream-second, for the ratio")
    ap.add_argument("--min-share", type=float, default=0.95,
                    help="a round counts if the relay received and sent this share of its packets")
    ap.add_argument("--sender-seconds", type=float, default=None,
                    help="how long the far end sends (default: the window + 4 s); "
                         "0 shows what a far end that quits at once does to the run")
    args = ap.parse_args()
    if args.py_relay:
        py_relay(int(args.py_relay[0]), float(args.py_relay[1]), float(args.py_relay[2]))
        return 0
    if args.engine_relay:
        engine_relay(int(args.engine_relay[0]), float(args.engine_relay[1]),
                     float(args.engine_relay[2]))
        return 0
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        ap.error(f"unknown mode(s) {bad}; choose from {', '.join(MODES)}")
    if not 0 < args.seconds <= 20:
        ap.error("--seconds must be in (0, 20]")
    if shutil.which("gcc") is None:
        print("SKIPPED: no gcc on PATH: the C relay and far end cannot be built", flush=True)
        return SKIP
    work = Path(tempfile.mkdtemp(prefix="rtp-floor-"))
    try:
        exe = build(work)
        gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout
        print(f"machine: {loadcheck.machine()}; kernel {platform.release()}; "
              f"{gcc.splitlines()[0] if gcc else 'gcc'}; load avg "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
        print(f"{args.rounds} round(s) of {args.seconds:g} s per mode and N; far end "
              f"{args.far_end}s what the relay sends; {PACKET}-byte packets, {PPS}/s per "
              f"stream each way", flush=True)
        res: dict[tuple[str, int], list[dict[str, Any]]] = {}
        failures: list[str] = []
        for rnd in range(1, args.rounds + 1):
            for n in args.streams:
                for mode in modes:
                    r = one_round(exe, mode, n, args)
                    res.setdefault((mode, n), []).append(r)
                    if "failed" in r:
                        failures.append(f"FAILED: mode {mode} N={n} round {rnd}: {r['failed']}")
                        print(failures[-1], flush=True)
                        continue
                    rl = r["relay"]
                    print(f"round {rnd} mode {mode:<2} N={n:<4} relay CPU {r['ms']:.3f} ms per "
                          f"stream-second (system, tick-sampled {r['sys_ms']:.3f}"
                          + (f"; media clock's ticks {r['tick_ms']:.3f}" if "tick_ms" in r else "")
                          + f"); per stream per s rx "
                          f"{rl['rx'] / (n * rl['window']):.1f} tx {rl['tx'] / (n * rl['window']):.1f};"
                          f" far end {r['far_ms']:.3f} ms per stream-second; load "
                          f"{r['load']:.1f}", flush=True)
            if failures:
                break
        rows: list[tuple[str, list[float], str]] = []
        for mode in modes:
            for n in args.streams:
                got = res.get((mode, n), [])
                rows.append((f"{mode} N={n} relay ms/stream-s",
                             [r["ms"] for r in got if "ms" in r], ".3f"))
                if any("tick_ms" in r for r in got):
                    rows.append(("  of which the media clock's ticks",
                                 [r["tick_ms"] for r in got if "tick_ms" in r], ".3f"))
        rows.append(("load avg (1 min) at round end",
                     [r["load"] for rs in res.values() for r in rs], ".1f"))
        print(f"\n=== summary: relay CPU (user + system) per stream-second; engine "
              f"{args.engine_ms:g} ms for the ratio ===")
        for mode in modes:
            print(f"  {mode}: {MODES[mode]}")
        for line in loadcheck.table(rows):
            print(line)
        for mode in modes:
            for n in args.streams:
                s = loadcheck.spread([r["ms"] for r in res.get((mode, n), []) if "ms" in r])
                if s:
                    print(f"floor {mode} N={n}: median {s[1]:.3f} ms per stream-second = "
                          f"{s[1] / args.engine_ms * 100:.0f} % of the engine's "
                          f"{args.engine_ms:g} ms")
        if failures:
            print("\n".join(failures))
            return 1
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
