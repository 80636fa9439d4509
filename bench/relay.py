"""RTP relay benchmark: N bridged G.711 calls through the switch, and through rtpengine.

    python -m bench.relay                          # both systems, 50..1000 calls, 5 s a step
    python -m bench.relay --quick --systems softswitch    # smoke: 2 and 5 calls, 1 s each
    python -m bench.relay --calls 100,500 --seconds 10 --systems softswitch,rtpengine

Per system, ``max(--calls)`` calls are set up once, then streamed to in steps of N calls: every
call carries 20 ms PCMU (50 packets/s) in each direction, so a step relays ``100 * N``
packets/s. The packets come from ``bench/rtpgen.c`` (built here with ``cc -O2``; a slower
Python generator stands in, with a warning, when there is no compiler), which also receives
them back on the same two sockets with kernel receive timestamps (``SO_TIMESTAMPNS``) and
computes loss, delay (arrival - send, one clock) and RFC 3550 section 6.4.1 jitter.

Systems (see bench/README.md for the fairness notes):

* ``loopback``: no relay; the generator's two sockets send to each other. The baseline that
  "added" delay is measured against (always run, first).
* ``softswitch``: ``python -m switch run`` with a generated config; the calls are set up with
  SIPp (``bench/scenarios/relay_uac.xml`` -> switch -> ``relay_uas.xml``), whose SDP names the
  generator's sockets (``-key rtpport``); the switch's media ports are read from SIPp's message
  traces. The switch runs as configured for production: strict source check, RFC 4733 DTMF
  inspection on every packet (both SDPs offer telephone-event), per-endpoint counters.
* ``rtpengine``: Debian's ``rtpengine`` daemon in userspace only (``--table=-1``), driven
  through its ng control protocol (bencode over UDP) with ``offer``/``answer`` carrying the
  same SDPs, flag ``strict source``.

A step is loss-free when every packet sent came back. The rate climbs until a step loses a
packet. Figures per step: packets relayed per CPU-second of the relay process (all its
threads; = packets per second per fully used core), the CPU share used, delay p50/p99/max and
the jitter the relay added p50/p99. Results go to ``bench/results/relay-<stamp>/``.
Exit status: 0 when every selected system produced figures, 1 on a harness failure, 3 when a
needed tool (SIPp, rtpengine) is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    HOST,
    REPO,
    SCENARIOS,
    Proc,
    cpu_seconds,
    free_ports,
    loadavg,
    sip_ping,
    sipp_binary,
    wait_http_ok,
    write_csv,
)

NUMBER = "+905321234567"
CALLER = "+905551234567"
PPS_PER_CALL = 100  # 50 packets/s each way
TARGET_RATIO = 1.0
TARGET_CALLS = 500
TARGET_P99_ADDED_MS = 1.0
DEFAULT_CALLS = "50,100,200,300,500,750,1000"
STEP_COLUMNS = (
    "system", "calls", "rate_pps", "actual_pps", "sent", "received", "lost", "duplicates",
    "unknown", "wall_s", "cpu_s", "cpu_share", "pps_per_core", "delay_p50_us", "delay_p99_us",
    "delay_max_us",
    "added_p50_us", "added_p99_us", "jitter_added_p50_us", "jitter_added_p99_us",
    "jitter_rfc3550_p99_us", "send_late_max_us", "loadavg",
)  # fmt: skip


# --------------------------------------------------------------------------- generator


def build_generator(workdir: Path) -> list[str] | None:
    """Compile bench/rtpgen.c; the argv prefix to run it, or None when there is no compiler."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None
    binary = workdir / "rtpgen"
    proc = subprocess.run(
        [cc, "-O2", "-o", str(binary), str(Path(__file__).with_name("rtpgen.c"))],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    if proc.returncode != 0:
        print(f"relay: cc failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return [str(binary)]


def python_generator(
    port_a: int, port_b: int, targets: Path, streams: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """The fallback generator + sink: rtpgen.c's protocol and figures, in Python (slower:
    it cannot pace more than some thousands of packets per second)."""
    so_ts = getattr(socket, "SO_TIMESTAMPNS", 35)
    socks = []
    for port in (port_a, port_b):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        kernel_ts = True
        try:
            s.setsockopt(socket.SOL_SOCKET, so_ts, 1)
        except OSError:
            kernel_ts = False
        s.bind((HOST, port))
        s.setblocking(False)
        socks.append(s)
    lines = targets.read_text().split("\n")[:streams]
    dests = [(0 if ln.split()[0] == "a" else 1, (HOST, int(ln.split()[1]))) for ln in lines]
    frames = int((seconds + warmup) * 50)
    interval = 0.020 / streams
    sent = [0] * streams
    seen: list[set[int]] = [set() for _ in range(streams)]
    last: list[tuple[int, int, int] | None] = [None] * streams
    j_add = [0.0] * streams
    j_rfc = [0.0] * streams
    delays: list[float] = []
    jadd: list[float] = []
    jrfc: list[float] = []
    dups = unknown = 0
    late_max = 0.0
    late_1ms = 0
    cmsg = socket.CMSG_SPACE(16)
    base = 0x5EB00000
    t0 = time.monotonic() + 0.05
    measure_from = time.time_ns() + 50_000_000 + int(warmup * 1e9)
    payload_pad = b"\xff" * (160 - 12)

    def drain() -> int:
        nonlocal dups, unknown
        got = 0
        for s in socks:
            while True:
                try:
                    data, anc, _f, _a = s.recvmsg(2048, cmsg)
                except BlockingIOError:
                    break
                arrival = time.time_ns()
                if anc and anc[0][1] == so_ts:
                    sec, nsec = struct.unpack("qq", anc[0][2][:16])
                    arrival = sec * 1_000_000_000 + nsec
                got += 1
                (ssrc,) = struct.unpack_from("!I", data, 8)
                idx = ssrc - base
                if len(data) < 24 or not 0 <= idx < streams:
                    unknown += 1
                    continue
                (ts,) = struct.unpack_from("!I", data, 4)
                sent_at, frame = struct.unpack_from("<qI", data, 12)
                if frame in seen[idx]:
                    dups += 1
                    continue
                seen[idx].add(frame)
                measured = sent_at >= measure_from
                if measured:
                    delays.append((arrival - sent_at) / 1000)
                prev = last[idx]
                if prev is not None:
                    d_add = abs((arrival - prev[0]) - (sent_at - prev[1]))
                    d_rfc = abs((arrival - prev[0]) - ((ts - prev[2]) & 0xFFFFFFFF) * 125_000)
                    j_add[idx] += (d_add - j_add[idx]) / 16
                    j_rfc[idx] += (d_rfc - j_rfc[idx]) / 16
                    if measured:
                        jadd.append(j_add[idx] / 1000)
                        jrfc.append(j_rfc[idx] / 1000)
                last[idx] = (arrival, sent_at, ts)
        return got

    total = streams * frames
    i = 0
    while i < total:
        now = time.monotonic()
        while i < total and t0 + i * interval <= now:
            idx, frame = i % streams, i // streams
            late = now - (t0 + i * interval)
            late_max = max(late_max, late)
            late_1ms += late > 0.001
            header = struct.pack(
                "!BBHII", 0x80, 0, (frame + idx * 7919) & 0xFFFF,
                (frame * 160 + idx * 104729) & 0xFFFFFFFF, base + idx,
            )  # fmt: skip
            sock_i, dest = dests[idx]
            pkt = header + struct.pack("<qI", time.time_ns(), frame) + payload_pad
            socks[sock_i].sendto(pkt, dest)
            sent[idx] += 1
            i += 1
        drain()
        delay = t0 + i * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    send_end = time.monotonic()
    end = send_end + 1.0
    while sum(len(s) for s in seen) + dups < sum(sent) and time.monotonic() < end:
        if not drain():
            time.sleep(0.005)
    for s in socks:
        s.close()
    received = sum(len(s) for s in seen)

    def pct(values: list[float], p: float) -> float:
        if not values:
            return -1.0
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, max(0, int(p / 100 * len(ordered) + 0.999999) - 1))]

    return {
        "streams": streams, "frames_per_stream": frames, "rate_pps": streams * 50.0,
        "sent": sum(sent), "received": received, "lost": sum(sent) - received,
        "streams_with_loss": sum(1 for k in range(streams) if len(seen[k]) < sent[k]),
        "duplicates": dups, "unknown": unknown, "send_errors": 0, "kernel_timestamps": kernel_ts,
        "send_lateness_us": {"max": late_max * 1e6, "over_1ms": late_1ms},
        "delay_us": {"samples": len(delays), "min": min(delays, default=-1.0),
                     "p50": pct(delays, 50), "p99": pct(delays, 99), "p999": pct(delays, 99.9),
                     "max": max(delays, default=-1.0)},
        "jitter_added_us": {"p50": pct(jadd, 50), "p99": pct(jadd, 99),
                            "max": max(jadd, default=-1.0)},
        "jitter_rfc3550_us": {"p50": pct(jrfc, 50), "p99": pct(jrfc, 99),
                              "max": max(jrfc, default=-1.0)},
        "python_generator": True,
        "send_seconds": send_end - t0,
    }  # fmt: skip


class Generator:
    """Runs one step of rtpgen (C, or the Python fallback in a child process)."""

    def __init__(self, workdir: Path, force_python: bool) -> None:
        self.workdir = workdir
        argv = None if force_python else build_generator(workdir)
        if argv is None:
            print(
                "relay: WARNING: no C compiler, using the Python generator; it cannot pace "
                "high rates, so large steps measure the generator, not the relay",
                file=sys.stderr,
            )
            argv = [sys.executable, "-m", "bench.relay", "--pygen"]
        self.argv: list[str] = argv
        self.kind = "python" if "--pygen" in self.argv else "c"
        self.port_a = free_ports(1)
        self.port_b = free_ports(1)

    def run(
        self, pairs: Sequence[tuple[int, int]], seconds: float, warmup: float, name: str
    ) -> dict[str, Any]:
        """Stream on ``pairs`` (caller-side port, callee-side port) and return rtpgen's JSON."""
        targets = self.workdir / f"targets-{name}.txt"
        lines: list[str] = []
        for a, b in pairs:
            lines += [f"a {a}", f"b {b}"]
        targets.write_text("\n".join(lines) + "\n")
        argv = [
            *self.argv,
            str(self.port_a),
            str(self.port_b),
            str(targets),
            str(2 * len(pairs)),
            f"{seconds:g}",
            f"{warmup:g}",
        ]
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
            timeout=seconds + warmup + 120,
        )
        if proc.returncode != 0 or not proc.stdout.strip():
            raise RuntimeError(f"generator failed ({proc.returncode}): {proc.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result


# --------------------------------------------------------------------------- bencode / ng


def bencode(value: Any) -> bytes:
    """Bencode ``value`` (dict with str keys, list, str, bytes, int)."""
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans")
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list | tuple):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in value.items())
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in items) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes) -> Any:
    """Decode one bencoded value (byte strings come back as str when they are UTF-8)."""

    def parse(i: int) -> tuple[Any, int]:
        c = data[i : i + 1]
        if c == b"i":
            end = data.index(b"e", i)
            return int(data[i + 1 : end]), end + 1
        if c == b"l":
            i += 1
            items = []
            while data[i : i + 1] != b"e":
                item, i = parse(i)
                items.append(item)
            return items, i + 1
        if c == b"d":
            i += 1
            out: dict[str, Any] = {}
            while data[i : i + 1] != b"e":
                key, i = parse(i)
                out[key if isinstance(key, str) else key.decode("latin-1")], i = parse(i)
            return out, i + 1
        if c.isdigit():
            colon = data.index(b":", i)
            n = int(data[i:colon])
            raw = data[colon + 1 : colon + 1 + n]
            if len(raw) != n:
                raise ValueError("truncated bencode string")
            try:
                return raw.decode(), colon + 1 + n
            except UnicodeDecodeError:
                return raw, colon + 1 + n
        raise ValueError(f"bad bencode at offset {i}")

    value, end = parse(0)
    if end != len(data):
        raise ValueError("trailing data after bencode value")
    return value


class NgClient:
    """rtpengine's ng control protocol: ``<cookie> <bencoded dict>`` over UDP."""

    def __init__(self, port: int) -> None:
        self.addr = (HOST, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.n = 0

    def call(self, command: dict[str, Any], timeout: float = 2.0, tries: int = 3) -> Any:
        """Send ``command`` and return the decoded reply (retried on timeout, same cookie)."""
        self.n += 1
        cookie = f"{os.getpid()}_{self.n}".encode()
        msg = cookie + b" " + bencode(command)
        self.sock.settimeout(timeout)
        for _ in range(tries):
            self.sock.sendto(msg, self.addr)
            try:
                while True:
                    data = self.sock.recv(65535)
                    head, _, body = data.partition(b" ")
                    if head == cookie:
                        return bdecode(body)
            except TimeoutError:
                continue
        raise TimeoutError(f"rtpengine did not answer {command.get('command')}")

    def close(self) -> None:
        self.sock.close()


def _sdp(port: int, session: int) -> str:
    return "\r\n".join([
        "v=0", f"o=- {session} 1 IN IP4 {HOST}", "s=-", f"c=IN IP4 {HOST}", "t=0 0",
        f"m=audio {port} RTP/AVP 0 101", "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15", "a=sendrecv", "",
    ])  # fmt: skip


_M_AUDIO = re.compile(r"^m=audio (\d+) ", re.M)


# --------------------------------------------------------------------------- systems


class System:
    """A relay under test: started, given calls, then stopped (by PID)."""

    name = "?"
    description = ""

    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.args = args
        self.proc: Proc | None = None
        self.procs: list[Proc] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def unavailable(self) -> str | None:
        return None

    def setup(self, calls: int, gen: Generator) -> list[tuple[int, int]]:
        """Start and create ``calls`` calls; (caller-side port, callee-side port) per call."""
        raise NotImplementedError

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


class Loopback(System):
    """No relay: the generator's two sockets talk to each other (the delay baseline)."""

    name = "loopback"
    description = "no relay: generator socket to generator socket (baseline)"

    def setup(self, calls: int, gen: Generator) -> list[tuple[int, int]]:
        return [(gen.port_b, gen.port_a)] * calls


class Softswitch(System):
    """Our switch, ``python -m switch run``; calls placed by SIPp UAC -> switch -> SIPp UAS."""

    name = "softswitch"
    description = (
        "softswitch B2BUA, media anchored: strict source check, RFC 4733 DTMF inspection, counters"
    )

    def unavailable(self) -> str | None:
        if sipp_binary() is None:
            return "SIPp not found: apt-get install sip-tester"
        return None

    def _config(self, sip: int, http: int, uac: int, uas: int) -> str:
        lo, hi = (int(x) for x in self.args.rtp_range.split("-", 1))
        return "\n".join([
            "# Generated by bench/relay.py: SIPp UAC (transit trunk) -> switch -> SIPp UAS.",
            "[sip]", f'address = "{HOST}"', f"port = {sip}", 'transports = ["udp"]',
            "[rtp]", f'address = "{HOST}"', f"port_min = {lo}", f"port_max = {hi}",
            "[http]", f'address = "{HOST}"', f"port = {http}",
            "[calls]", "ring_timeout = 3600", f'inband_dtmf = "{self.args.inband_dtmf}"',
            "[store]", f'url = "sqlite:///{self.workdir / "softswitch.db"}"',
            "[log]", 'level = "WARNING"',
            "[[trunks]]", 'name = "uac"', f'host = "{HOST}"', f"port = {uac}", "transit = true",
            "[[trunks]]", 'name = "uas"', f'host = "{HOST}"', f"port = {uas}",
            "[[routes]]", 'pattern = "^\\\\+"', 'trunk = "uas"', "",
        ])  # fmt: skip

    def setup(self, calls: int, gen: Generator) -> list[tuple[int, int]]:
        sipp = sipp_binary()
        assert sipp is not None
        sip, http, uac, uas = (free_ports(1) for _ in range(4))
        cfg = self.workdir / "softswitch.toml"
        cfg.write_text(self._config(sip, http, uac, uas))
        env = {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        }
        self.proc = Proc(
            [sys.executable, "-m", "switch", "run", "-c", str(cfg)],
            log=self.workdir / "softswitch.log",
            cwd=self.workdir,
            env=env,
        )
        self.procs.append(self.proc)
        if not wait_http_ok(f"http://{HOST}:{http}/healthz", 30) or not sip_ping(sip, 5.0):
            raise RuntimeError("softswitch did not start:\n" + self.proc.tail())
        uas_log, uac_log = self.workdir / "uas_msg.log", self.workdir / "uac_msg.log"
        common = ["-i", HOST, "-nostdin", "-buff_size", "4194304", "-trace_msg"]
        self.procs.append(
            Proc(
                [
                    sipp,
                    "-sf",
                    str(SCENARIOS / "relay_uas.xml"),
                    "-p",
                    str(uas),
                    "-mp",
                    str(free_ports(4)),
                    "-key",
                    "rtpport",
                    str(gen.port_b),
                    "-message_file",
                    str(uas_log),
                    *common,
                ],
                log=self.workdir / "uas.log",
                cwd=self.workdir,
            )
        )
        self.procs.append(Proc(
            [sipp, "-sf", str(SCENARIOS / "relay_uac.xml"), f"{HOST}:{sip}", "-p", str(uac),
             "-mp", str(free_ports(4)), "-key", "rtpport", str(gen.port_a), "-s", NUMBER,
             "-key", "caller", CALLER,
             "-r", str(self.args.setup_rate), "-m", str(calls), "-l", str(calls),
             "-d", "36000000", "-message_file", str(uac_log), *common],
            log=self.workdir / "uac.log", cwd=self.workdir))  # fmt: skip
        deadline = time.monotonic() + 30 + calls / self.args.setup_rate * 2
        a_ports: list[int] = []
        b_ports: list[int] = []
        while time.monotonic() < deadline:
            # The switch's caller-side port is in the 200 OK the UAC received, its callee-side
            # port in the INVITE the UAS received; SIPp traces both (ours are filtered out).
            a_ports = self._ports(uac_log, gen.port_a)
            b_ports = self._ports(uas_log, gen.port_b)
            if len(a_ports) >= calls and len(b_ports) >= calls:
                break
            if not all(p.alive() for p in self.procs):
                break
            time.sleep(0.5)
        if len(a_ports) < calls or len(b_ports) < calls:
            raise RuntimeError(
                f"softswitch: only {len(a_ports)}/{len(b_ports)} of {calls} "
                f"calls set up:\n{self.proc.tail()}"
            )
        time.sleep(1.0)  # the last ACKs
        # Calls are not paired here: each stream is checked on its own, and every switch
        # port relays to the one generator socket of the other side.
        return list(zip(a_ports[:calls], b_ports[:calls], strict=True))

    @staticmethod
    def _ports(trace: Path, own: int) -> list[int]:
        try:
            text = trace.read_text(errors="replace")
        except OSError:
            return []
        ports = [int(m) for m in _M_AUDIO.findall(text)]
        return list(dict.fromkeys(p for p in ports if p != own))


class Rtpengine(System):
    """Debian's rtpengine, userspace forwarding only, driven over the ng protocol."""

    name = "rtpengine"
    description = (
        "rtpengine userspace (--table=-1), ng offer/answer, flag 'strict source', "
        "one worker thread per core"
    )

    def unavailable(self) -> str | None:
        if shutil.which("rtpengine") is None:
            return "rtpengine not found: apt-get install -y rtpengine-daemon"
        return None

    def setup(self, calls: int, gen: Generator) -> list[tuple[int, int]]:
        exe = shutil.which("rtpengine")
        assert exe is not None
        ng = free_ports(1)
        lo, hi = (int(x) for x in self.args.rtpengine_range.split("-", 1))
        self.proc = Proc(
            [exe, "--config-file=none", "--foreground", "--log-stderr", "--table=-1",
             f"--interface={HOST}", f"--listen-ng={HOST}:{ng}", f"--port-min={lo}",
             f"--port-max={hi}", f"--num-threads={os.cpu_count() or 1}", "--log-level=4",
             "--timeout=3600", "--silent-timeout=3600", "--delete-delay=0"],
            log=self.workdir / "rtpengine.log", cwd=self.workdir)  # fmt: skip
        self.procs.append(self.proc)
        client = NgClient(ng)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    if (
                        client.call({"command": "ping"}, timeout=0.5, tries=1).get("result")
                        == "pong"
                    ):
                        break
                except TimeoutError:
                    pass
                if time.monotonic() > deadline or not self.proc.alive():
                    raise RuntimeError("rtpengine did not start:\n" + self.proc.tail())
            pairs: list[tuple[int, int]] = []
            flags = ["strict source"]
            for k in range(calls):
                base = {"call-id": f"relay-bench-{k}", "from-tag": f"from-{k}"}
                offer = client.call(
                    {
                        "command": "offer",
                        "sdp": _sdp(gen.port_a, k),
                        "flags": flags,
                        "replace": ["origin"],
                        **base,
                    }
                )
                answer = client.call(
                    {
                        "command": "answer",
                        "sdp": _sdp(gen.port_b, k),
                        "to-tag": f"to-{k}",
                        "flags": flags,
                        "replace": ["origin"],
                        **base,
                    }
                )
                if offer.get("result") != "ok" or answer.get("result") != "ok":
                    raise RuntimeError(f"rtpengine refused call {k}: {offer} {answer}")
                # The offer's rewritten SDP goes to the callee (it sends to that port); the
                # answer's goes to the caller.
                b_port = int(_M_AUDIO.findall(offer["sdp"])[0])
                a_port = int(_M_AUDIO.findall(answer["sdp"])[0])
                pairs.append((a_port, b_port))
        finally:
            client.close()
        return pairs


SYSTEMS: dict[str, type[System]] = {"softswitch": Softswitch, "rtpengine": Rtpengine}


# --------------------------------------------------------------------------- run


def run_steps(
    system: System,
    gen: Generator,
    steps: list[int],
    args: argparse.Namespace,
    baseline: dict[int, dict[str, Any]],
) -> list[dict[str, Any]]:
    """Set up ``max(steps)`` calls, then stream to the first N of them per step."""
    pairs = system.setup(max(steps), gen)
    rows: list[dict[str, Any]] = []
    pid = system.pid
    idle = 0.0
    if pid is not None:
        idle0 = cpu_seconds(pid) or 0.0
        time.sleep(1.0)
        idle = (cpu_seconds(pid) or 0.0) - idle0
    for n in steps:
        c0 = cpu_seconds(pid) if pid is not None else None
        w0 = time.monotonic()
        res = gen.run(pairs[:n], args.seconds, args.warmup, f"{system.name}-{n}")
        wall = time.monotonic() - w0
        c1 = cpu_seconds(pid) if pid is not None else None
        cpu = (c1 - c0) if c0 is not None and c1 is not None else None
        row = _row(system.name, n, res, cpu, wall, baseline.get(n))
        row["idle_cpu_share"] = idle
        rows.append(row)
        _progress(row)
        if row["lost"] > 0 or (pid is not None and cpu_seconds(pid) is None):
            break
    return rows


def _row(
    name: str,
    n: int,
    res: dict[str, Any],
    cpu: float | None,
    wall: float,
    base: dict[str, Any] | None,
) -> dict[str, Any]:
    delay, jit = res["delay_us"], res["jitter_added_us"]
    row: dict[str, Any] = {
        "system": name, "calls": n, "rate_pps": n * PPS_PER_CALL, "sent": res["sent"],
        "received": res["received"], "lost": res["lost"], "duplicates": res["duplicates"],
        "unknown": res["unknown"], "cpu_s": cpu, "wall_s": wall,
        # over the sending time: the generator may run longer than planned when it is starved
        "cpu_share": cpu / max(res["send_seconds"], 1e-3) if cpu is not None else None,
        "actual_pps": res["sent"] / max(res["send_seconds"], 1e-3),
        "pps_per_core": res["received"] / cpu if cpu else None,
        "delay_p50_us": delay["p50"], "delay_p99_us": delay["p99"], "delay_max_us": delay["max"],
        "added_p50_us": delay["p50"] - base["delay_p50_us"] if base else None,
        "added_p99_us": delay["p99"] - base["delay_p99_us"] if base else None,
        "jitter_added_p50_us": jit["p50"], "jitter_added_p99_us": jit["p99"],
        "jitter_rfc3550_p99_us": res["jitter_rfc3550_us"]["p99"],
        "send_late_max_us": res["send_lateness_us"]["max"], "loadavg": loadavg(),
        "generator": res,
    }  # fmt: skip
    return row


def _fmt(value: Any, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def _progress(row: dict[str, Any]) -> None:
    print(
        f"  {row['system']:<10} {row['calls']:>5} calls {row['rate_pps']:>7} pps "
        f"(sent at {row['actual_pps']:.0f}/s): "
        f"lost {row['lost']}, CPU {_fmt(row['cpu_share'], '.2f')} core, "
        f"{_fmt(row['pps_per_core'])} pps/core, delay p50/p99 "
        f"{row['delay_p50_us']:.0f}/{row['delay_p99_us']:.0f} us (added "
        f"{_fmt(row['added_p50_us'])}/{_fmt(row['added_p99_us'])}), added jitter p50/p99 "
        f"{row['jitter_added_p50_us']:.1f}/{row['jitter_added_p99_us']:.1f} us, "
        f"load {row['loadavg']:.1f}",
        flush=True,
    )


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per system: the highest loss-free step and its figures."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(r["system"] for r in rows):
        mine = [r for r in rows if r["system"] == name]
        ok = [r for r in mine if r["lost"] == 0]
        best = max(ok, key=lambda r: r["calls"]) if ok else None
        out[name] = {
            "max_loss_free_calls": best["calls"] if best else 0,
            "max_loss_free_pps": best["rate_pps"] if best else 0,
            "at_max": {k: best[k] for k in STEP_COLUMNS} if best else None,
            "first_lossy_calls": next((r["calls"] for r in mine if r["lost"] > 0), None),
            # the same with the delay target too: a relay that keeps up only by queueing is
            # loss-free but not usable
            "max_calls_p99_ok": max(
                (
                    r["calls"]
                    for r in ok
                    if r["added_p99_us"] is not None
                    and r["added_p99_us"] <= TARGET_P99_ADDED_MS * 1000
                ),
                default=0,
            ),
        }
    return out


def compare(rows: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """softswitch / rtpengine ratios at the highest step both relayed without loss."""
    ours = {r["calls"]: r for r in rows if r["system"] == "softswitch" and r["lost"] == 0}
    theirs = {r["calls"]: r for r in rows if r["system"] == "rtpengine" and r["lost"] == 0}
    common = sorted(set(ours) & set(theirs))
    result: dict[str, Any] = {}
    if "softswitch" in summary and "rtpengine" in summary:
        a = summary["softswitch"]["max_loss_free_pps"]
        b = summary["rtpengine"]["max_loss_free_pps"]
        result["max_loss_free_pps_ratio"] = a / b if b else None
    if common:
        n = common[-1]
        a, b = ours[n]["pps_per_core"], theirs[n]["pps_per_core"]
        result["common_calls"] = n
        result["pps_per_core_ratio"] = a / b if a and b else None
        result["delay_p99_ratio"] = (
            ours[n]["delay_p99_us"] / theirs[n]["delay_p99_us"]
            if theirs[n]["delay_p99_us"] > 0
            else None
        )
    return result


def targets(rows: list[dict[str, Any]], ratios: dict[str, Any]) -> dict[str, bool | None]:
    """The issue's targets; None when the run did not reach the step that decides one."""
    ours = {r["calls"]: r for r in rows if r["system"] == "softswitch"}
    at = ours.get(TARGET_CALLS)
    ratio = ratios.get("pps_per_core_ratio")
    return {
        f"pps per core >= {TARGET_RATIO:g}x rtpengine": None if ratio is None
        else ratio >= TARGET_RATIO,
        f"{TARGET_CALLS} calls on one core without loss": None if at is None
        else at["lost"] == 0 and (at["cpu_share"] or 0) <= 1.0,
        f"added p99 delay <= {TARGET_P99_ADDED_MS:g} ms at {TARGET_CALLS} calls": None
        if at is None or at["added_p99_us"] is None
        else at["added_p99_us"] <= TARGET_P99_ADDED_MS * 1000,
    }  # fmt: skip


def _plot(rows: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name in dict.fromkeys(r["system"] for r in rows):
        mine = [r for r in rows if r["system"] == name]
        x = [r["rate_pps"] for r in mine]
        if name != "loopback":
            ax1.plot(x, [r["cpu_share"] or 0 for r in mine], marker="o", label=name)
        ax2.plot(x, [r["delay_p99_us"] for r in mine], marker="o", label=name)
    ax1.set(xlabel="packets/s relayed", ylabel="CPU (cores)", title="relay CPU")
    ax2.set(xlabel="packets/s relayed", ylabel="delay p99 (us)", title="delay p99")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    ap = argparse.ArgumentParser(
        prog="python -m bench.relay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--calls", default=DEFAULT_CALLS, help="steps: calls streamed at once")
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per step")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds not measured, per step")
    ap.add_argument("--systems", default="softswitch,rtpengine")
    ap.add_argument("--quick", action="store_true", help="2 and 5 calls, 1 s (smoke test)")
    ap.add_argument("--python-generator", action="store_true", help="skip the C generator")
    ap.add_argument("--setup-rate", type=int, default=100, help="calls/s while setting up")
    ap.add_argument("--rtp-range", default="46000-53999", help="the switch's RTP ports")
    ap.add_argument("--rtpengine-range", default="54000-61999", help="rtpengine's RTP ports")
    ap.add_argument(
        "--inband-dtmf",
        default="auto",
        choices=("auto", "always", "off"),
        help="the switch's [calls] inband_dtmf (auto = off here: both SDPs offer telephone-event)",
    )
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--pygen", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.pygen:
        pa, pb, tf, st, sec, wu = args.pygen
        print(
            json.dumps(python_generator(int(pa), int(pb), Path(tf), int(st), float(sec), float(wu)))
        )
        return 0
    if args.quick:
        args.calls, args.seconds, args.warmup = "2,5", 1.0, 0.5
    try:
        steps = sorted({int(x) for x in args.calls.split(",") if x.strip()})
    except ValueError:
        ap.error("--calls takes comma-separated integers")
    if not steps or steps[0] < 1 or steps[-1] > 5000 or not 0 < args.seconds <= 120:
        ap.error("need 1 <= calls <= 5000 and 0 < seconds <= 120")
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        ap.error(f"unknown systems {unknown}; choose from {sorted(SYSTEMS)}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = (
        args.out or REPO / "bench" / "results" / f"relay{'-quick' if args.quick else ''}-{stamp}"
    )
    workdir.mkdir(parents=True, exist_ok=True)
    systems = [SYSTEMS[n](workdir, args) for n in names]
    skipped: dict[str, str] = {}
    for s in list(systems):
        reason = s.unavailable()
        if reason:
            print(f"relay: skipping {s.name}: {reason}", file=sys.stderr)
            skipped[s.name] = reason
            systems.remove(s)
    if not systems:
        return 3
    gen = Generator(workdir, args.python_generator)
    print(
        f"relay: {len(steps)} steps {steps} calls x {PPS_PER_CALL} pps, {args.seconds:g} s "
        f"(+{args.warmup:g} s warm-up) each; generator {gen.kind}; results in {workdir}"
    )
    rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    base_rows = run_steps(Loopback(workdir, args), gen, steps, args, {})
    rows += base_rows
    baseline = {r["calls"]: r for r in base_rows}
    for system in systems:
        print(f"relay: {system.name}: setting up {steps[-1]} calls", flush=True)
        try:
            rows += run_steps(system, gen, steps, args, baseline)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"relay: {system.name} failed: {exc}", file=sys.stderr)
            failures[system.name] = str(exc)
        finally:
            system.stop()
    summary = summarize(rows)
    ratios = compare(rows, summary)
    checks = targets(rows, ratios)
    results = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": {"python": platform.python_version(), "cpus": os.cpu_count(),
                 "machine": platform.machine(), "loadavg_start": rows[0]["loadavg"]},
        "parameters": {"steps": steps, "seconds": args.seconds, "warmup": args.warmup,
                       "generator": gen.kind, "inband_dtmf": args.inband_dtmf},
        "systems": {s.name: s.description for s in systems}, "skipped": skipped,
        "failures": failures, "summary": summary, "ratios": ratios, "targets": checks,
        "steps": rows,
    }  # fmt: skip
    (workdir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    write_csv(workdir / "steps.csv", rows, STEP_COLUMNS)
    plotted = _plot(rows, workdir / "relay.png")
    _print_summary(results, workdir, plotted)
    return 1 if failures else 0


def _print_summary(r: dict[str, Any], workdir: Path, plotted: bool) -> None:
    print(
        "\nsystem      max loss-free   pps/core at max   CPU   delay p50/p99 us  added p99 us"
        "  jitter+ p99 us"
    )
    for name, s in r["summary"].items():
        m = s["at_max"] or {}
        print(
            f"{name:<11} {s['max_loss_free_calls']:>5} calls    {_fmt(m.get('pps_per_core')):>9}"
            f"      {_fmt(m.get('cpu_share'), '.2f'):>5}  "
            f"{_fmt(m.get('delay_p50_us'))}/{_fmt(m.get('delay_p99_us')):<10}"
            f"  {_fmt(m.get('added_p99_us')):>8}      {_fmt(m.get('jitter_added_p99_us'), '.1f')}"
        )
        if name != "loopback":
            print(
                f"{'':<11} highest step also within added p99 <= {TARGET_P99_ADDED_MS:g} ms: "
                f"{s['max_calls_p99_ok']} calls"
            )
    ratios = r["ratios"]
    if ratios.get("common_calls"):
        print(
            f"softswitch / rtpengine at {ratios['common_calls']} calls: pps per core "
            f"{_fmt(ratios.get('pps_per_core_ratio'), '.2f')}x; max loss-free rate "
            f"{_fmt(ratios.get('max_loss_free_pps_ratio'), '.2f')}x"
        )
    for name, ok in r["targets"].items():
        verdict = "not reached in this run" if ok is None else "ok" if ok else "MISSED"
        print(f"  target {name}: {verdict}")
    for name, why in {**r["skipped"], **r["failures"]}.items():
        print(f"  {name}: not measured: {why}")
    print(f"  results {workdir}/results.json, steps.csv" + (", relay.png" if plotted else ""))


if __name__ == "__main__":
    sys.exit(main())
