"""Call-rate (CPS) benchmark: SIPp UAC -> system under test -> SIPp UAS, stepping the rate up.

    python -m bench.cps [--quick] [--systems softswitch,sippy,kamailio] [--out bench/results]

Each step places ``rate x step-seconds`` one-second calls (UDP) through the system under test
and measures, from SIPp's own counters: successful and failed calls, retransmissions (both
SIPp sides), setup time (INVITE -> 200, SIPp ``rtd`` + ``-trace_rtt``) percentiles, and the
CPU seconds the system under test spent during the step (``/proc/<pid>/stat``), per call.
The rate climbs until a call fails, a retransmission (or a stray retransmitted message)
appears, or p99 setup time exceeds ``--p99-ms``; the result for a system is the highest rate
with no failed call and no retransmission. The systems are our switch (media anchored), the
Sippy B2BUA (signalling only) and a Kamailio stateful proxy (``t_relay``); the ratios
softswitch / sippy and softswitch / kamailio come from the same run. See bench/README.md.

Exit status: 0 when every system completed calls in every step it ran; 1 when a system did
not (or the harness failed); 3 when a required peer (sipp, sippy, kamailio) is not available.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    HOST,
    REPO,
    SCENARIOS,
    Proc,
    SippCommand,
    SippCounters,
    bound_udp_ports,
    children_cpu_seconds,
    count_unexpected,
    cpu_seconds,
    free_ports,
    is_free,
    loadavg,
    percentile,
    read_rtt,
    sip_ping,
    sipp_binary,
    summarize_profile,
    wait_http_ok,
    write_csv,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNAVAILABLE = 3

FULL_RATES = (50, 100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500, 2000, 2500, 3000, 4000,
              5000)  # fmt: skip
QUICK_RATES = (10, 20)
DIALLED = "+905321234567"  # a valid TR mobile number (the switch validates with phonenumbers)
CALLER = "902121234567"
ROUTE_PATTERN = "^\\+"  # every E.164 number -> the "uas" trunk

STEP_COLUMNS = (
    "system", "rate", "calls", "successful", "failed", "uas_failed", "retransmissions",
    "uac_retransmissions", "uas_retransmissions", "dead_call_msgs", "out_of_call_msgs",
    "late_provisionals", "unexpected_msgs", "setup_samples", "setup_p50_ms", "setup_p90_ms",
    "setup_p99_ms", "setup_max_ms", "setup_mean_ms", "sut_cpu_s", "cpu_ms_per_call",
    "net_cpu_ms_per_call", "sut_cpu_pct", "sipp_cpu_s", "wall_s", "loadavg", "clean", "p99_ok",
    "verdict", "uac_exit", "uas_exit",
)  # fmt: skip


# --------------------------------------------------------------------------- systems under test


def tree_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and every live descendant process.

    Kamailio does its work in forked child processes; a child's CPU shows up in its parent's
    ``/proc/<pid>/stat`` only once it is reaped, so the tree is summed. None if ``pid`` is gone.
    """
    own = cpu_seconds(pid)
    if own is None:
        return None
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(raw.rsplit(")", 1)[1].split()[1])  # field 4 of proc(5)
        parents.setdefault(ppid, []).append(int(entry.name))
    total, todo = own, list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        total += cpu_seconds(child) or 0.0
        todo.extend(parents.get(child, []))
    return total


@dataclass
class Ports:
    """The loopback ports of one system's run (fixed for all its steps)."""

    uac: int
    uac_media: int
    uac_control: int
    uas: int
    uas_media: int
    uas_control: int


class System:
    """A system under test: started once, driven by every step, stopped at the end."""

    name = ""
    description = ""
    python = True  # a CPython process py-spy can sample (--profile)

    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        self.workdir = workdir
        self.args = args
        self.proc: Proc | None = None
        self.sip_port = 0

    def unavailable(self) -> str | None:
        """Why this system cannot run here (with how to fix it), or None."""
        return None

    def start(self, ports: Ports) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def cpu(self) -> float | None:
        """CPU seconds the system has used so far (None when it is gone)."""
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def info(self) -> dict[str, Any]:
        return {"description": self.description, "sip_port": self.sip_port}


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string for this content


class Softswitch(System):
    """Our switch, ``python -m switch run`` with a generated config (media anchored)."""

    name = "softswitch"
    description = "softswitch B2BUA, RTP anchored (2 RTP/RTCP port pairs per call)"

    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        super().__init__(workdir, args)
        lo, hi = (int(x) for x in args.rtp_range.split("-", 1))
        self.rtp_min, self.rtp_max = lo, hi
        # bench.concurrent puts the RTP sockets on their own loopback address (127.0.0.2).
        self.rtp_address: str = getattr(args, "rtp_address", None) or HOST
        self.http_port = 0

    def unavailable(self) -> str | None:
        if importlib.util.find_spec("phonenumbers") is None:
            return "the switch's dependencies are missing: pip install -e ."
        return None

    def config_text(self, ports: Ports) -> str:
        db = self.workdir / "softswitch.db"
        return "\n".join(
            [
                "# Generated by bench/cps.py: SIPp UAC (transit trunk) -> switch -> SIPp UAS.",
                "[sip]",
                f"address = {_toml_str(HOST)}",
                f"port = {self.sip_port}",
                'transports = ["udp"]',
                "[rtp]",
                f"address = {_toml_str(self.rtp_address)}",
                f"port_min = {self.rtp_min}",
                f"port_max = {self.rtp_max}",
                "[http]",
                f"address = {_toml_str(HOST)}",
                f"port = {self.http_port}",
                "[calls]",
                "ring_timeout = 3600",
                "[store]",
                f"url = {_toml_str('sqlite:///' + str(db))}",
                "[log]",
                'level = "WARNING"',
                "",
                "# The SIPp UAC's source address:port: a peering trunk, so its calls to numbers",
                "# that are not its DIDs follow [[routes]] (not challenged: trunks are trusted).",
                "[[trunks]]",
                'name = "uac"',
                f"host = {_toml_str(HOST)}",
                f"port = {ports.uac}",
                "transit = true",
                "",
                "# The SIPp UAS stands in for the carrier.",
                "[[trunks]]",
                'name = "uas"',
                f"host = {_toml_str(HOST)}",
                f"port = {ports.uas}",
                "",
                "[[routes]]",
                f"pattern = {_toml_str(ROUTE_PATTERN)}",
                'trunk = "uas"',
                "",
            ]
        )

    def start(self, ports: Ports) -> None:
        self.sip_port = free_ports(1)
        self.http_port = free_ports(1)
        busy = bound_udp_ports(self.rtp_min, self.rtp_max)
        pairs = (self.rtp_max - self.rtp_min + 1) // 2
        if busy > pairs // 10:
            print(
                f"  warning: {busy} UDP ports of the RTP range {self.args.rtp_range} are in "
                "use by other processes (they are skipped)",
                file=sys.stderr,
            )
        cfg = self.workdir / "softswitch.toml"
        cfg.write_text(self.config_text(ports))
        env = {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        }
        self.proc = Proc(
            [sys.executable, "-m", "switch", "run", "-c", str(cfg)],
            log=self.workdir / "softswitch.log",
            cwd=self.workdir,
            env=env,
        )
        url = f"http://{HOST}:{self.http_port}/healthz"
        if not wait_http_ok(url, self.args.start_timeout) or not sip_ping(self.sip_port, 5.0):
            tail = self.proc.tail()
            self.stop()
            raise RuntimeError(f"softswitch did not come up on {url}:\n{tail}")

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "rtp_range": self.args.rtp_range,
            "http_port": self.http_port,
            "config": str(self.workdir / "softswitch.toml"),
        }


class Sippy(System):
    """Sippy B2BUA (``b2bua_simple``), signalling only: SDP passes through untouched."""

    name = "sippy"
    description = "Sippy B2BUA b2bua_simple, signalling only (no media relay)"

    def unavailable(self) -> str | None:
        if importlib.util.find_spec("sippy") is None and not self.args.no_install:
            print("  sippy is not installed: pip install sippy", file=sys.stderr)
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    [sys.executable, "-m", "pip", "install", "-q", "sippy"],
                    check=False,
                    timeout=300,
                )
            importlib.invalidate_caches()
        if importlib.util.find_spec("sippy") is None:
            return "Sippy B2BUA is not installed: pip install sippy"
        return None

    def start(self, ports: Ports) -> None:
        self.sip_port = free_ports(1)
        self.proc = Proc(
            [
                sys.executable,
                "-m",
                "sippy.b2bua_simple",
                "-f",
                "-l",
                HOST,
                "-p",
                str(self.sip_port),
                "-n",
                f"{HOST}:{ports.uas}",
                "-L",
                str(self.workdir / "sippy-b2bua.log"),
            ],
            log=self.workdir / "sippy.log",
            cwd=self.workdir,
            env={"SIPLOG_LVL": "ERR"},
        )
        if not sip_ping(self.sip_port, self.args.start_timeout):
            tail = self.proc.tail()
            self.stop()
            raise RuntimeError(f"sippy did not answer OPTIONS on port {self.sip_port}:\n{tail}")

    def info(self) -> dict[str, Any]:
        version = None
        with contextlib.suppress(Exception):
            from importlib.metadata import version as _v

            version = _v("sippy")
        return {**super().info(), "version": version}


KAMAILIO_CFG = """#!KAMAILIO
# Generated by bench/cps.py: a stateful proxy (tm t_relay) in front of the SIPp UAS.
debug=0
log_stderror=yes
fork=yes
children={children}
listen=udp:{host}:{port}
disable_tcp=yes
disable_sctp=yes
auto_aliases=no
dns=no
rev_dns=no
use_dns_cache=no

loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "siputils.so"

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    # The harness's readiness probe (bench.common.sip_ping).
    if (method == "OPTIONS" && uri == myself) {{
        sl_send_reply("200", "OK");
        exit;
    }}
    # In-dialog (ACK, BYE): follow the Route set if any (RFC 3261 16.12), else the
    # Request-URI, which is the UAS's Contact.
    if (has_totag()) {{
        loose_route();
        if (method == "ACK" && !t_check_trans()) {{
            # ACK for a 2xx is its own transaction: relayed statelessly (RFC 3261 13.2.2.4).
            forward();
            exit;
        }}
        t_relay();
        exit;
    }}
    if (method == "CANCEL") {{
        if (t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    # Initial request: stay on the path (Record-Route, RFC 3261 16.6 step 4) and relay it
    # statefully to the SIPp UAS (t_relay also absorbs retransmissions and sends 100 Trying).
    record_route();
    $du = "sip:{host}:{uas_port}";
    if (!t_relay()) {{
        sl_reply_error();
    }}
    exit;
}}
"""


def kamailio_binary() -> str | None:
    """Path of ``kamailio`` (also looked for in /usr/sbin, often not on a user's PATH)."""
    return shutil.which("kamailio") or shutil.which("kamailio", path="/usr/sbin:/usr/local/sbin")


class Kamailio(System):
    """Kamailio stateful proxy (``tm`` ``t_relay``) with Record-Route, signalling only."""

    name = "kamailio"
    description = "Kamailio stateful proxy (t_relay, record_route), signalling only"
    python = False

    def unavailable(self) -> str | None:
        if kamailio_binary() is None and not self.args.no_install:
            print("  kamailio is not installed: apt-get install -y kamailio", file=sys.stderr)
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    ["apt-get", "install", "-y", "-q", "kamailio"],
                    check=False,
                    timeout=600,
                    env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                )
        if kamailio_binary() is None:
            return "Kamailio is not installed: apt-get install -y kamailio"
        return None

    @staticmethod
    def children() -> int:
        """UDP worker processes: one per core, at least 2 (a worker blocks while it sends)."""
        return max(2, min(8, os.cpu_count() or 2))

    def start(self, ports: Ports) -> None:
        binary = kamailio_binary()
        assert binary is not None
        self.sip_port = free_ports(1)
        cfg = self.workdir / "kamailio.cfg"
        cfg.write_text(
            KAMAILIO_CFG.format(
                children=self.children(), host=HOST, port=self.sip_port, uas_port=ports.uas
            )
        )
        # -DD: the main process stays in the foreground (its workers are its children), so
        # Proc.stop() ends the whole tree by this PID; -E: log to stderr (our log file).
        # -m: shared memory (MB) for the transaction table; -M: private memory per process.
        self.proc = Proc(
            [binary, "-f", str(cfg), "-DD", "-E", "-m", "256", "-M", "16"],
            log=self.workdir / "kamailio.log",
            cwd=self.workdir,
        )
        if not sip_ping(self.sip_port, self.args.start_timeout):
            tail = self.proc.tail()
            self.stop()
            raise RuntimeError(f"kamailio did not answer OPTIONS on port {self.sip_port}:\n{tail}")

    def cpu(self) -> float | None:
        return tree_cpu_seconds(self.pid)

    def info(self) -> dict[str, Any]:
        version = None
        binary = kamailio_binary()
        if binary:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run(
                    [binary, "-v"], capture_output=True, text=True, timeout=5,
                    stdin=subprocess.DEVNULL,
                )  # fmt: skip
                version = (out.stdout.splitlines() or [""])[0].removeprefix("version: ").strip()
        return {
            **super().info(),
            "version": version,
            "children": self.children(),
            "config": str(self.workdir / "kamailio.cfg"),
        }


SYSTEMS: dict[str, type[System]] = {"softswitch": Softswitch, "sippy": Sippy, "kamailio": Kamailio}


# --------------------------------------------------------------------------- one step


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def run_step(
    system: System, ports: Ports, rate: int, args: argparse.Namespace, sipp: str, stepdir: Path
) -> dict[str, Any]:
    """Place ``rate * step_seconds`` calls at ``rate`` cps through ``system``; measure."""
    stepdir.mkdir(parents=True, exist_ok=True)
    calls = max(1, round(rate * args.step_seconds))
    call_s = args.call_ms / 1000.0
    uac_budget = args.step_seconds + call_s + args.recv_timeout_ms / 1000.0 + 15.0

    uas_cmd = SippCommand(
        SCENARIOS / "uas.xml",
        ports.uas,
        ports.uas_media,
        ports.uas_control,
        stepdir,
        "uas",
        extra=["-m", str(calls), "-recv_timeout", str(args.recv_timeout_ms + 5000)],
    )
    uac_cmd = SippCommand(
        SCENARIOS / "uac.xml",
        ports.uac,
        ports.uac_media,
        ports.uac_control,
        stepdir,
        "uac",
        remote=f"{HOST}:{system.sip_port}",
        extra=[
            "-s",
            DIALLED,
            "-key",
            "caller",
            CALLER,
            "-r",
            str(rate),
            "-rp",
            "1000",
            "-m",
            str(calls),
            "-l",
            str(max(50, rate * 4)),
            "-d",
            str(args.call_ms),
            "-default_behaviors",
            "all,-abortunexp",
            "-trace_rtt",
            "-rtt_freq",
            "1",
            "-recv_timeout",
            str(args.recv_timeout_ms),
            "-timeout",
            f"{int(uac_budget)}s",
            "-timeout_error",
        ],
    )

    # A fresh UAS per step: its counters are the step's; it exits after `calls` calls.
    for _ in range(50):  # the previous step's UAS must have released the port
        if is_free(ports.uas):
            break
        time.sleep(0.1)
    uas = Proc(uas_cmd.argv(sipp), log=stepdir / "uas.out", cwd=stepdir)
    uac: Proc | None = None
    profiler: Proc | None = None
    try:
        for _ in range(50):
            if not is_free(ports.uas) or not uas.alive():
                break
            time.sleep(0.05)

        load = loadavg()
        ch0 = children_cpu_seconds()
        cpu0 = system.cpu()
        t0 = time.monotonic()
        uac = Proc(uac_cmd.argv(sipp), log=stepdir / "uac.out", cwd=stepdir)
        if args.profile and system.python:
            # Sample the system under test while the calls are placed (not the drain).
            profiler = Proc(
                [args.profile, "record", "--pid", str(system.pid), "--rate", "200",
                 "--nonblocking", "--format", "raw", "--duration",
                 str(max(1, int(args.step_seconds))), "-o", str(stepdir / "profile.txt")],
                log=stepdir / "py-spy.log",
            )  # fmt: skip
        uac_exit = uac.wait(uac_budget + 15.0)
        if uac_exit is None:
            uac_exit = uac.stop()
        wall = time.monotonic() - t0
        cpu1 = system.cpu()
        # The UAS has every call by now (or never will): let it finish its timewait, then stop.
        uas_exit = uas.wait(3.0)
        if uas_exit is None:
            uas_exit = uas.stop()
    finally:  # also on Ctrl-C: no SIPp is left behind
        if profiler is not None and profiler.wait(10.0) is None:
            profiler.stop()
        if uac is not None:
            uac.stop()
        uas.stop()
    sipp_cpu = children_cpu_seconds() - ch0

    uac_c = SippCounters.from_csv(uac_cmd.stat_file)
    uas_c = SippCounters.from_csv(uas_cmd.stat_file)
    rtt = read_rtt(stepdir, "uac_*_rtt.csv")
    late_1xx, unexpected = count_unexpected(uac_cmd.error_file)
    sut_cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    ok_calls = uac_c.successful
    failed = uac_c.failed + max(0, calls - uac_c.successful - uac_c.failed)
    retrans = uac_c.retransmissions + uas_c.retransmissions
    stray = uac_c.dead_call_msgs + uas_c.dead_call_msgs
    p99 = percentile(rtt, 99)
    clean = (
        failed == 0
        and uas_c.failed == 0
        and retrans == 0
        and stray == 0
        and unexpected == 0
        and uac_c.found
        and system.alive()
    )
    p99_ok = p99 is not None and (args.p99_ms <= 0 or p99 <= args.p99_ms)
    if not system.alive():
        verdict = "system under test died"
    elif not uac_c.found:
        verdict = f"no SIPp statistics (uac exit {uac_exit}, see {stepdir})"
    elif failed or uas_c.failed:
        verdict = f"{failed} failed calls" + (
            f", {uas_c.failed} at the UAS" if uas_c.failed else ""
        )
    elif retrans:
        verdict = f"{retrans} retransmissions"
    elif stray:
        verdict = f"{stray} stray (dead-call) messages"
    elif unexpected:
        verdict = f"{unexpected} unexpected messages"
    elif not p99_ok:
        verdict = f"p99 setup {_fmt(p99, 0)} ms > {args.p99_ms:g} ms"
    else:
        verdict = "ok"
    mean = sum(rtt) / len(rtt) if rtt else None
    return {
        "system": system.name,
        "rate": rate,
        "calls": calls,
        "successful": ok_calls,
        "failed": failed,
        "uas_failed": uas_c.failed,
        "retransmissions": retrans,
        "uac_retransmissions": uac_c.retransmissions,
        "uas_retransmissions": uas_c.retransmissions,
        "dead_call_msgs": stray,
        "out_of_call_msgs": uac_c.out_of_call_msgs + uas_c.out_of_call_msgs,
        "late_provisionals": late_1xx,
        "unexpected_msgs": unexpected,
        "setup_samples": len(rtt),
        "setup_p50_ms": percentile(rtt, 50),
        "setup_p90_ms": percentile(rtt, 90),
        "setup_p99_ms": p99,
        "setup_max_ms": max(rtt) if rtt else None,
        "setup_mean_ms": None if mean is None else round(mean, 2),
        "sut_cpu_s": None if sut_cpu is None else round(sut_cpu, 3),
        "cpu_ms_per_call": (
            None if sut_cpu is None or not ok_calls else round(sut_cpu * 1000.0 / ok_calls, 3)
        ),
        "sut_cpu_pct": None if sut_cpu is None else round(100.0 * sut_cpu / wall, 1),
        "sipp_cpu_s": round(sipp_cpu, 3),
        "wall_s": round(wall, 2),
        "loadavg": load,
        "clean": clean,
        "p99_ok": p99_ok,
        "verdict": verdict,
        "uac_exit": uac_exit,
        "uas_exit": uas_exit,
        "dir": str(stepdir),
        "profile": summarize_profile(stepdir / "profile.txt") if profiler is not None else None,
    }


# --------------------------------------------------------------------------- one system


def bench_system(
    system: System,
    rates: list[int],
    args: argparse.Namespace,
    sipp: str,
) -> dict[str, Any]:
    """Start ``system``, step through ``rates`` until it breaks or the budget runs out."""
    ports = Ports(
        uac=free_ports(1),
        uac_media=free_ports(4),
        uac_control=free_ports(1),
        uas=free_ports(1),
        uas_media=free_ports(4),
        uas_control=free_ports(1),
    )
    steps: list[dict[str, Any]] = []
    idle_rate = 0.0  # CPU seconds per second while idle
    stop_reason = "all rates done"
    error = None
    print(f"\n== {system.name}: {system.description}", flush=True)
    try:
        system.start(ports)
        print(
            f"   up: SIP 127.0.0.1:{system.sip_port}, pid {system.pid}; UAC port {ports.uac}, "
            f"UAS port {ports.uas}",
            flush=True,
        )
        # The CPU the idle system burns (timers, housekeeping): reported, and subtracted for
        # the "net" CPU per call.
        c0, t0 = system.cpu(), time.monotonic()
        time.sleep(args.idle_seconds)
        c1, t1 = system.cpu(), time.monotonic()
        if c0 is not None and c1 is not None:
            idle_rate = (c1 - c0) / (t1 - t0)
        print(f"   idle CPU: {idle_rate * 1000:.1f} ms/s", flush=True)
        started = time.monotonic()
        step_cost = args.step_seconds + args.call_ms / 1000.0 + args.settle + 2.0
        for rate in rates:
            elapsed = time.monotonic() - started
            if steps and elapsed + step_cost > args.max_system_seconds:
                stop_reason = f"time budget ({args.max_system_seconds:g} s) spent"
                break
            step = run_step(system, ports, rate, args, sipp, system.workdir / f"step-{rate:05d}cps")
            if step["sut_cpu_s"] is not None and step["successful"]:
                net = step["sut_cpu_s"] - idle_rate * step["wall_s"]
                step["net_cpu_ms_per_call"] = round(max(0.0, net) * 1000.0 / step["successful"], 3)
            steps.append(step)
            print(
                f"   {rate:6d} cps: {step['successful']:6d}/{step['calls']:<6d} ok, "
                f"failed {step['failed']}, retrans {step['retransmissions']}, "
                f"setup p50/p99 {_fmt(step['setup_p50_ms'], 0)}/{_fmt(step['setup_p99_ms'], 0)}"
                f" ms, CPU {_fmt(step['cpu_ms_per_call'], 3)} ms/call "
                f"({_fmt(step['sut_cpu_pct'], 0)}%), "
                + (f"late 1xx {step['late_provisionals']}, " if step["late_provisionals"] else "")
                + f"load {step['loadavg']:.2f} "
                f"-> {step['verdict']}",
                flush=True,
            )
            prof = step.get("profile")
            if prof and prof["samples"]:
                print(f"          py-spy, {prof['samples']} samples; top self time:", flush=True)
                for name, pct in prof["self"][:10]:
                    print(f"          {pct:5.1f}%  {name}", flush=True)
            if step["verdict"] != "ok":
                stop_reason = step["verdict"]
                break
            time.sleep(args.settle)
    except Exception as exc:  # a harness failure: report it, keep the other systems going
        error = f"{type(exc).__name__}: {exc}"
        stop_reason = "error"
        print(f"   error: {error}", file=sys.stderr, flush=True)
    finally:
        system.stop()

    clean = [s for s in steps if s["clean"]]
    best = max(clean, key=lambda s: s["rate"]) if clean else None
    fast = [s for s in clean if s["p99_ok"]]
    best_fast = max(fast, key=lambda s: s["rate"]) if fast else None
    return {
        "system": system.name,
        "info": system.info(),
        "ports": ports.__dict__,
        "max_cps": best["rate"] if best else 0,
        "cpu_ms_per_call": best["cpu_ms_per_call"] if best else None,
        "net_cpu_ms_per_call": best.get("net_cpu_ms_per_call") if best else None,
        "idle_cpu_ms_per_s": round(idle_rate * 1000.0, 2),
        "setup_p50_ms": best["setup_p50_ms"] if best else None,
        "setup_p99_ms": best["setup_p99_ms"] if best else None,
        "p99_ok_at_max": best["p99_ok"] if best else None,
        # The highest rate that also kept p99 setup time within --p99-ms.
        "max_cps_within_p99": best_fast["rate"] if best_fast else 0,
        "setup_p99_ms_at_max_within_p99": best_fast["setup_p99_ms"] if best_fast else None,
        "stop_reason": stop_reason,
        "error": error,
        "completed_calls": all(s["successful"] > 0 for s in steps) and bool(steps),
        "steps": steps,
    }


# --------------------------------------------------------------------------- report


def print_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print()
    header = (
        f"{'system':<12} {'max CPS':>8} {'CPU ms/call':>12} {'net of idle':>12} "
        f"{'setup p50 ms':>13} {'setup p99 ms':>13} {'max CPS p99 ok':>15}  stopped because"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        star = "*" if r["p99_ok_at_max"] is False else ""
        print(
            f"{r['system']:<12} {r['max_cps']:>8} {_fmt(r['cpu_ms_per_call'], 3):>12} "
            f"{_fmt(r['net_cpu_ms_per_call'], 3):>12} {_fmt(r['setup_p50_ms'], 0):>13} "
            f"{_fmt(r['setup_p99_ms'], 0) + star:>13} {r['max_cps_within_p99']:>15}  "
            f"{r['stop_reason']}"
        )
    if any(r["p99_ok_at_max"] is False for r in results):
        print(f"* p99 setup time above the {args.p99_ms:g} ms threshold at that rate")
    limit = f"<= {args.p99_ms:g} ms" if args.p99_ms > 0 else "(no limit set: --p99-ms 0)"
    print(
        "max CPS: highest rate with no failed call and no retransmission; max CPS p99 ok: "
        f"highest rate that also kept p99 setup time {limit}"
    )


# The targets for our switch against each anchor, from the same run: max CPS ratio.
TARGETS = {"sippy": 5.0, "kamailio": 0.35}


def ratios(results: list[dict[str, Any]], anchor: str = "sippy") -> dict[str, Any]:
    """softswitch / ``anchor``: max CPS, CPU per call (each at its max, and at one rate)."""
    by = {r["system"]: r for r in results}
    if "softswitch" not in by or anchor not in by:
        return {}
    a, b = by["softswitch"], by[anchor]
    out: dict[str, Any] = {
        "max_cps": round(a["max_cps"] / b["max_cps"], 3) if b["max_cps"] else None,
        "max_cps_within_p99": (
            round(a["max_cps_within_p99"] / b["max_cps_within_p99"], 3)
            if b["max_cps_within_p99"]
            else None
        ),
        "cpu_ms_per_call": (
            round(a["cpu_ms_per_call"] / b["cpu_ms_per_call"], 3)
            if a["cpu_ms_per_call"] and b["cpu_ms_per_call"]
            else None
        ),
    }
    if anchor in TARGETS:
        out["target_max_cps"] = TARGETS[anchor]
        out["target_met"] = None if out["max_cps"] is None else out["max_cps"] >= TARGETS[anchor]
    # CPU per call at the same rate (the highest both ran cleanly) is the fairer comparison.
    rates_a = {s["rate"]: s for s in a["steps"] if s["clean"]}
    rates_b = {s["rate"]: s for s in b["steps"] if s["clean"]}
    common = sorted(set(rates_a) & set(rates_b))
    if common:
        r = common[-1]
        ca, cb = rates_a[r]["cpu_ms_per_call"], rates_b[r]["cpu_ms_per_call"]
        out["same_rate"] = r
        out["cpu_ms_per_call_same_rate"] = round(ca / cb, 3) if ca and cb else None
    return out


def plot(results: list[dict[str, Any]], path: Path) -> Path | None:
    """CPU/call and p99 setup vs rate, when matplotlib is installed (else nothing)."""
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    except Exception:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        steps = [s for s in r["steps"] if s["cpu_ms_per_call"] is not None]
        if not steps:
            continue
        x = [s["rate"] for s in steps]
        ax1.plot(x, [s["cpu_ms_per_call"] for s in steps], marker="o", label=r["system"])
        ax2.plot(x, [s["setup_p99_ms"] or 0 for s in steps], marker="o", label=r["system"])
    ax1.set(xlabel="offered calls/s", ylabel="CPU ms per call", title="CPU per call")
    ax2.set(xlabel="offered calls/s", ylabel="ms", title="setup time p99 (INVITE -> 200)")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.cps", description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke mode: rates 10 and 20 cps for 3 s each (CI; < 60 s)",
    )
    p.add_argument(
        "--systems",
        default="softswitch,sippy,kamailio",
        help="comma-separated: softswitch, sippy, kamailio (default: all three)",
    )
    p.add_argument(
        "--out",
        default=str(REPO / "bench" / "results"),
        help="results folder (default bench/results)",
    )
    p.add_argument(
        "--rates",
        help="comma-separated rate steps (cps); default "
        f"{','.join(map(str, FULL_RATES))} ({','.join(map(str, QUICK_RATES))} quick)",
    )
    p.add_argument("--step-seconds", type=float, help="seconds of calls per step (10; 3 quick)")
    p.add_argument("--call-ms", type=int, default=1000, help="call length, SIPp -d (1000)")
    p.add_argument(
        "--p99-ms",
        type=float,
        default=200.0,
        help="stop when p99 setup time exceeds this (200 ms; 0 = never)",
    )
    p.add_argument(
        "--max-system-seconds",
        type=float,
        help="stepping time budget per system (180 s; 40 s quick)",
    )
    p.add_argument(
        "--idle-seconds",
        type=float,
        help="seconds to measure the idle CPU of each system before stepping (3; 1 quick)",
    )
    p.add_argument("--settle", type=float, help="pause between steps (2 s; 0.5 s quick)")
    p.add_argument(
        "--recv-timeout-ms",
        type=int,
        help="SIPp -recv_timeout: an answer later than this fails the call (10000; 5000 quick)",
    )
    p.add_argument(
        "--rtp-range",
        default="46000-59999",
        help="the switch's RTP port range (default 46000-59999: 3500 calls)",
    )
    p.add_argument(
        "--start-timeout",
        type=float,
        default=20.0,
        help="seconds a system may take to come up (20)",
    )
    p.add_argument(
        "--profile",
        action="store_const",
        const=shutil.which("py-spy") or "py-spy",
        help="sample each system with py-spy during every step (pip install py-spy); the "
        "collapsed stacks go to the step folder, the top functions to results.json",
    )
    p.add_argument(
        "--no-install",
        action="store_true",
        help="do not install a missing anchor (pip install sippy, apt-get install kamailio)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quick = args.quick
    rates = (
        [int(x) for x in args.rates.split(",") if x.strip()]
        if args.rates
        else list(QUICK_RATES if quick else FULL_RATES)
    )
    if args.step_seconds is None:
        args.step_seconds = 3.0 if quick else 10.0
    if args.max_system_seconds is None:
        args.max_system_seconds = 40.0 if quick else 180.0
    if args.idle_seconds is None:
        args.idle_seconds = 1.0 if quick else 3.0
    if args.settle is None:
        args.settle = 0.5 if quick else 2.0
    if args.recv_timeout_ms is None:
        args.recv_timeout_ms = 5000 if quick else 10000
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown or not names:
        print(f"unknown system(s) {unknown}; choose from {', '.join(SYSTEMS)}", file=sys.stderr)
        return 2

    if args.profile and shutil.which(args.profile) is None:
        print("py-spy not installed: pip install py-spy", file=sys.stderr)
        return EXIT_UNAVAILABLE
    sipp = sipp_binary()
    if sipp is None:
        print("SIPp not installed: apt-get install sip-tester", file=sys.stderr)
        return EXIT_UNAVAILABLE

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(args.out).resolve() / f"cps-{'quick-' if quick else ''}{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"CPS benchmark{' (quick)' if quick else ''}: rates {rates}, {args.step_seconds:g} s "
        f"per step, {args.call_ms} ms calls, p99 limit "
        f"{f'{args.p99_ms:g} ms' if args.p99_ms > 0 else 'off'}; results in "
        f"{run_dir}",
        flush=True,
    )

    systems = [SYSTEMS[n](run_dir / n, args) for n in names]
    missing = {s.name: s.unavailable() for s in systems}
    missing = {k: v for k, v in missing.items() if v}
    if missing:
        for name, why in missing.items():
            print(f"{name}: {why}", file=sys.stderr)
        return EXIT_UNAVAILABLE

    results: list[dict[str, Any]] = []
    started = dt.datetime.now().isoformat(timespec="seconds")
    for system in systems:
        system.workdir.mkdir(parents=True, exist_ok=True)
        results.append(bench_system(system, rates, args, sipp))

    print_table(results, args)
    all_ratios = {anchor: ratios(results, anchor) for anchor in TARGETS}
    if any(all_ratios.values()):
        print()
    for anchor, ratio in all_ratios.items():
        if not ratio:
            continue
        met = ratio.get("target_met")
        print(
            f"softswitch / {anchor}: max CPS x{_fmt(ratio.get('max_cps'), 2)} "
            f"[target >= x{TARGETS[anchor]:g}: "
            f"{'met' if met else 'NOT met' if met is not None else 'no figure'}] "
            + (
                f"(x{_fmt(ratio.get('max_cps_within_p99'), 2)} within the p99 limit), "
                if args.p99_ms > 0
                else ""
            )
            + f"CPU per call x{_fmt(ratio.get('cpu_ms_per_call'), 2)} (each at its max)"
            + (
                f", x{_fmt(ratio.get('cpu_ms_per_call_same_rate'), 2)} at {ratio['same_rate']} cps"
                if ratio.get("same_rate")
                else ""
            )
        )

    doc = {
        "benchmark": "cps",
        "quick": quick,
        "started": started,
        "finished": dt.datetime.now().isoformat(timespec="seconds"),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "sipp": sipp,
            "sipp_version": _sipp_version(sipp),
        },
        "params": {
            "rates": rates,
            "step_seconds": args.step_seconds,
            "call_ms": args.call_ms,
            "p99_ms": args.p99_ms,
            "max_system_seconds": args.max_system_seconds,
            "recv_timeout_ms": args.recv_timeout_ms,
            "dialled": DIALLED,
            "transport": "udp",
            "sipp_buff_size": 4194304,
        },
        "ratio_softswitch_over_sippy": all_ratios["sippy"],
        "ratio_softswitch_over_kamailio": all_ratios["kamailio"],
        "systems": results,
    }
    json_path = run_dir / "results.json"
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    csv_path = run_dir / "steps.csv"
    write_csv(csv_path, [s for r in results for s in r["steps"]], STEP_COLUMNS)
    png = plot(results, run_dir / "cps.png")
    print(f"\nresults: {json_path}\n         {csv_path}" + (f"\n         {png}" if png else ""))
    with contextlib.suppress(OSError):  # a stable name for the newest run
        latest = Path(args.out).resolve() / ("latest-quick" if quick else "latest")
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(run_dir.name)

    ok = all(r["completed_calls"] and r["error"] is None for r in results)
    return EXIT_OK if ok else EXIT_FAILED


def _sipp_version(sipp: str) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [sipp, "-v"], capture_output=True, text=True, timeout=5, stdin=subprocess.DEVNULL
        )
        for line in (out.stdout + out.stderr).splitlines():
            if "SIPp" in line:
                return line.strip()
    return None


if __name__ == "__main__":
    sys.exit(main())
