"""Playback pacing benchmark: N players on the shared media clock -> a UDP receiver process.

    python -m bench.pacing [--streams 500] [--seconds 10] [--quick] [--out bench/results]

The sender (this process) opens N RTP endpoints with :class:`media.engine.MediaEngine` on
127.0.0.1 and plays the built-in music on hold, looped, to each through a
:class:`media.playback.Player` on one :class:`media.clock.MediaClock`: the same path a
switch uses for prompts. A separate receiver process (``--receiver``, started and stopped
by PID) takes every packet on one socket with kernel receive timestamps (``SO_TIMESTAMPNS``;
``time.monotonic_ns()`` at receive if the kernel refuses) and computes per stream (SSRC):

* RFC 3550 section 6.4.1 interarrival jitter ``J`` (``J += (|D| - J) / 16``, D the transit
  time difference of consecutive packets), sampled at every packet after the warm-up; the
  report gives the median and p99 of those samples over all streams, and the p99 over
  streams of each stream's worst ``J``;
* the worst gap between two consecutive packets of a stream;
* packets per second per stream, and sequence-number discontinuities (loss/reordering).

On the sender side it records how late each clock wake-up ran behind its frame's due time,
how long one frame took to send for all streams, the clock's catch-up counters and the CPU
time used. Targets (checked in the summary): jitter p99 <= 2 ms, no gap over 25 ms, 50 pps.

Exit status: 0 when the targets are met, 1 when not (or the harness failed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import itertools
import json
import os
import platform
import resource
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"

_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux value
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_TIMESPEC = struct.Struct("qq")
_RTP = struct.Struct("!xxHII")  # sequence, timestamp, SSRC
_NS_PER_TS = 125_000  # one 8 kHz RTP timestamp unit in ns

TARGET_JITTER_MS = 2.0
TARGET_GAP_MS = 25.0
TARGET_PPS = 50.0


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


# --------------------------------------------------------------------------- receiver


def receiver_main(warmup: float, deadline: float, idle: float) -> int:
    """Receive RTP until ``idle`` seconds pass without a packet (after the first) or
    ``deadline`` seconds in all; print the port first, then one JSON line of results."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for opt in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, 64 << 20)
            break
        except OSError:
            continue
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        kernel_ts = True
    except OSError:
        kernel_ts = False
    sock.bind((HOST, 0))
    sock.setblocking(False)
    print(sock.getsockname()[1], flush=True)

    # per SSRC: [count, last_arrival_ns, last_ts, J_ns, max_gap_ns, first_measured_ns,
    #            measured_count, last_seq, seq_errors, max_J_ns, last_measured_ns]
    streams: dict[int, list[Any]] = {}
    jitter_samples: list[float] = []
    transit_samples: list[float] = []
    first_ns = 0
    measure_from = 0
    warmup_ns = int(warmup * 1e9)
    end_at = time.monotonic() + deadline
    cmsg_space = socket.CMSG_SPACE(_TIMESPEC.size)
    recvmsg = sock.recvmsg
    unpack_rtp = _RTP.unpack_from
    unpack_ts = _TIMESPEC.unpack_from
    last_packet = time.monotonic()
    packets = seen = 0
    while True:
        try:
            data, ancdata, _flags, _addr = recvmsg(2048, cmsg_space)
        except BlockingIOError:
            now = time.monotonic()
            if packets != seen:
                seen, last_packet = packets, now
            elif now > end_at or (packets and now - last_packet > idle):
                break
            # sleep instead of waiting on the socket: a waiting receiver would be woken by
            # every packet, and those wake-ups would be paid inside the sender's sendto();
            # the kernel timestamps keep the arrival times exact meanwhile
            time.sleep(0.002)
            continue
        if kernel_ts and ancdata:
            sec, nsec = unpack_ts(ancdata[0][2])
            arrival = sec * 1_000_000_000 + nsec
        else:
            arrival = time.monotonic_ns()
        if len(data) < 12:
            continue
        packets += 1
        seq, ts, ssrc = unpack_rtp(data)
        if not first_ns:
            first_ns = arrival
            measure_from = arrival + warmup_ns
        st = streams.get(ssrc)
        if st is None:
            streams[ssrc] = [1, arrival, ts, 0.0, 0, 0, 0, seq, 0, 0.0, 0]
            continue
        st[0] += 1
        d = (arrival - st[1]) - ((ts - st[2]) & 0xFFFFFFFF) * _NS_PER_TS
        j = st[3] + (abs(d) - st[3]) / 16.0
        st[3] = j
        if (seq - st[7]) & 0xFFFF != 1:
            st[8] += 1
        st[7] = seq
        if arrival >= measure_from:
            gap = arrival - st[1]
            if st[6]:
                if gap > st[4]:
                    st[4] = gap
                jitter_samples.append(j)
                transit_samples.append(abs(d))
                if j > st[9]:
                    st[9] = j
            else:
                st[5] = arrival
            st[6] += 1
            st[10] = arrival
        st[1] = arrival
        st[2] = ts
    sock.close()

    pps = [
        (s[6] - 1) / ((s[10] - s[5]) / 1e9) for s in streams.values() if s[6] > 1 and s[10] > s[5]
    ]
    gaps = [s[4] / 1e6 for s in streams.values() if s[6] > 1]
    max_j = [s[9] / 1e6 for s in streams.values() if s[6] > 1]
    j_ms = [v / 1e6 for v in jitter_samples]
    d_ms = [v / 1e6 for v in transit_samples]
    result = {
        "kernel_timestamps": kernel_ts,
        "streams": len(streams),
        "packets": packets,
        "measured_packets": sum(s[6] for s in streams.values()),
        "seq_discontinuities": sum(s[8] for s in streams.values()),
        "jitter_ms": {
            "median": statistics.median(j_ms) if j_ms else float("nan"),
            "p99": _pct(j_ms, 99),
            "max": max(j_ms, default=float("nan")),
        },
        "stream_max_jitter_ms": {"median": _pct(max_j, 50), "p99": _pct(max_j, 99)},
        "transit_delta_ms": {"p50": _pct(d_ms, 50), "p99": _pct(d_ms, 99), "max": max(d_ms)}
        if d_ms
        else {},
        "gap_ms": {
            "worst": max(gaps, default=float("nan")),
            "p99_of_stream_worst": _pct(gaps, 99),
            "median_of_stream_worst": _pct(gaps, 50),
        },
        "pps": {
            "median": _pct(pps, 50),
            "min": min(pps, default=float("nan")),
            "max": max(pps, default=float("nan")),
        },
    }
    print(json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------- sender


class _StartProbe:
    """First stream on the clock: how late each frame starts."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.lateness: list[float] = []
        self.starts: list[float] = []
        self.started: dict[int, float] = {}

    def tick(self, n: int) -> None:
        now = time.monotonic()
        self.started[n] = now
        self.starts.append(now)
        self.lateness.append(now - self.clock.frame_time(n))


async def run_sender(
    streams: int, seconds: float, warmup: float, port: int, slots: int | None, capacity: int
) -> dict[str, Any]:
    """Play looped music on hold on ``streams`` endpoints to ``HOST:port``."""
    from media.clock import MediaClock, shared_clock
    from media.engine import MediaEngine
    from media.playback import Player
    from media.prompts import builtin_prompt
    from media.sdp import PCMU
    from media.wav import load_prompt

    port_min = 40000
    engine = MediaEngine(HOST, port_min, port_min + 4 * streams + 200)
    await engine.start()
    endpoints = [await engine.allocate() for _ in range(streams)]
    for endpoint in endpoints:
        endpoint.set_remote((HOST, port), [PCMU])
    prompt = load_prompt(builtin_prompt("moh"))
    clock = shared_clock() if slots is None else MediaClock(slots=slots, slot_capacity=capacity)
    start_probe = _StartProbe(clock)
    clock.add(start_probe)
    await asyncio.sleep(0.1)  # the clock is running; players join on one frame
    players = [
        Player(endpoint.send_rtp, clock=clock, ssrc=i + 1) for i, endpoint in enumerate(endpoints)
    ]
    for player in players:
        player.play(prompt, loop=True)
    await asyncio.sleep(warmup)
    start_probe.lateness.clear()
    start_probe.starts.clear()
    clock.stats.max_busy = 0.0
    stats0 = (
        clock.stats.late_wakeups,
        clock.stats.skipped_frames,
        clock.stats.frames,
        clock.stats.busy,
        clock.stats.wakeups,
    )
    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu = time.process_time() - cpu0
    wall = time.monotonic() - wall0
    late = start_probe.lateness[:]
    starts = start_probe.starts[:]
    intervals = [(b - a) * 1e3 for a, b in itertools.pairwise(starts)]
    stats = clock.stats
    result = {
        "frames": stats.frames - stats0[2],
        "late_wakeups": stats.late_wakeups - stats0[0],
        "skipped_frames": stats.skipped_frames - stats0[1],
        "wakeup_lateness_ms": {
            "p50": _pct([x * 1e3 for x in late], 50),
            "p99": _pct([x * 1e3 for x in late], 99),
            "max": max(late, default=float("nan")) * 1e3,
        },
        "frame_interval_ms": {
            "min": min(intervals, default=float("nan")),
            "p99": _pct(intervals, 99),
            "max": max(intervals, default=float("nan")),
        },
        "slots": clock.slot_sizes,
        "wakeups": stats.wakeups - stats0[4],
        "busy_percent": 100.0 * (stats.busy - stats0[3]) / wall,
        "max_busy_ms": stats.max_busy * 1e3,
        "cpu_percent": 100.0 * cpu / wall,
        "packets_sent": sum(p.packets_sent for p in players),
        "send_errors": sum(p.send_errors for p in players) + sum(e.send_errors for e in endpoints),
    }
    for player in players:
        player.close()
    clock.remove(start_probe)
    await engine.close()
    return result


def _run_loop(coro: Any, use_uvloop: bool) -> tuple[Any, str]:
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(coro), f"uvloop {importlib.metadata.version('uvloop')}"
    return asyncio.run(coro), "asyncio"


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    ap = argparse.ArgumentParser(prog="python -m bench.pacing", description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=10.0, help="measured time")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true", help="50 streams, 3 s")
    ap.add_argument("--asyncio", action="store_true", help="plain asyncio instead of uvloop")
    ap.add_argument(
        "--slots", type=int, default=None, help="clock phases (default: the shared clock's)"
    )
    ap.add_argument("--slot-capacity", type=int, default=100, help="streams per phase")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"), help="results dir")
    ap.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=60.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.receiver:
        return receiver_main(args.warmup, args.deadline, idle=0.5)
    if args.quick:
        args.streams, args.seconds, args.warmup = 50, 3.0, 0.5
    _raise_fd_limit(2 * args.streams + 256)

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.pacing",
            "--receiver",
            "--warmup",
            str(args.warmup),
            "--deadline",
            str(args.warmup + args.seconds + 60),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        sender, loop_name = _run_loop(
            run_sender(
                args.streams, args.seconds, args.warmup, port, args.slots, args.slot_capacity
            ),
            not args.asyncio,
        )
        line = proc.stdout.readline()
        proc.wait(30)
    finally:
        _stop(proc)
    if not line:
        print("pacing: the receiver produced no result", file=sys.stderr)
        return 1
    receiver = json.loads(line)
    results = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": {
            "python": platform.python_version(),
            "loop": loop_name,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
        },
        "streams": args.streams,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "sender": sender,
        "receiver": receiver,
    }
    checks = {
        f"jitter p99 <= {TARGET_JITTER_MS} ms": receiver["jitter_ms"]["p99"] <= TARGET_JITTER_MS,
        f"no gap over {TARGET_GAP_MS} ms": receiver["gap_ms"]["worst"] <= TARGET_GAP_MS,
        f"{TARGET_PPS:g} pps per stream": abs(receiver["pps"]["min"] - TARGET_PPS) <= 0.5
        and abs(receiver["pps"]["max"] - TARGET_PPS) <= 0.5,
        "every stream received": receiver["streams"] == args.streams,
    }
    results["targets"] = checks
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out / f"pacing-{args.streams}x{args.seconds:g}s-{stamp}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    _print_summary(results, path)
    return 0 if all(checks.values()) else 1


def _print_summary(r: dict[str, Any], path: Path) -> None:
    s, rc = r["sender"], r["receiver"]
    ts = "kernel SO_TIMESTAMPNS" if rc["kernel_timestamps"] else "monotonic at receive"
    print(
        f"pacing: {r['streams']} streams x {r['seconds']:g} s on {r['host']['loop']}, "
        f"receiver timestamps: {ts}"
    )
    print(
        f"  received   {rc['measured_packets']} packets measured from {rc['streams']} streams, "
        f"{rc['seq_discontinuities']} sequence discontinuities"
    )
    print(
        f"  jitter     RFC 3550 J median {rc['jitter_ms']['median']:.3f} ms, "
        f"p99 {rc['jitter_ms']['p99']:.3f} ms, max {rc['jitter_ms']['max']:.3f} ms; "
        f"per-stream worst J p99 {rc['stream_max_jitter_ms']['p99']:.3f} ms"
    )
    if rc["transit_delta_ms"]:
        print(
            f"  |D|        p50 {rc['transit_delta_ms']['p50']:.3f} ms, "
            f"p99 {rc['transit_delta_ms']['p99']:.3f} ms, "
            f"max {rc['transit_delta_ms']['max']:.3f} ms"
        )
    print(
        f"  gaps       worst {rc['gap_ms']['worst']:.2f} ms, per-stream worst: median "
        f"{rc['gap_ms']['median_of_stream_worst']:.2f} ms, p99 "
        f"{rc['gap_ms']['p99_of_stream_worst']:.2f} ms"
    )
    print(
        f"  rate       pps per stream median {rc['pps']['median']:.3f}, "
        f"min {rc['pps']['min']:.3f}, max {rc['pps']['max']:.3f}"
    )
    print(
        f"  sender     clock phases {s['slots']} (streams per phase); frame-start lateness "
        f"p50 {s['wakeup_lateness_ms']['p50']:.3f} ms, p99 {s['wakeup_lateness_ms']['p99']:.3f} "
        f"ms, max {s['wakeup_lateness_ms']['max']:.3f} ms; interval between frame starts "
        f"{s['frame_interval_ms']['min']:.2f}-{s['frame_interval_ms']['max']:.2f} ms"
    )
    print(
        f"             {s['wakeups']} wake-ups, longest {s['max_busy_ms']:.2f} ms, clock busy "
        f"{s['busy_percent']:.1f}%; {s['late_wakeups']} late wake-ups, "
        f"{s['skipped_frames']} skipped, {s['send_errors']} send errors; "
        f"CPU {s['cpu_percent']:.1f}% of one core"
    )
    for name, ok in r["targets"].items():
        print(f"  target     {name}: {'ok' if ok else 'MISSED'}")
    print(f"  results    {path}")


if __name__ == "__main__":
    sys.exit(main())
