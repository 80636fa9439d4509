"""Run SIPp 3.6.1 (Debian ``sip-tester``) from tests, and see the RTP it exchanges.

Usage
-----
Foreground (a UAC run to completion)::

    res = await sipp.arun("uac_auth_call", switch_port, local_port=free_udp_tcp_port(),
                          service="1002", auth_user="1001", auth_pass="pw",
                          keys={"caller": "1001"}, duration_ms=500, workdir=tmp_path)
    res.check()          # AssertionError with SIPp's error log + screen if the call failed

(``sipp.run(...)`` is the same, blocking; do not use it from async tests that must keep their
event loop running, e.g. while an :class:`RtpSink` is receiving.)

Background (a UAS standing in for a trunk)::

    async with RtpSink() as sink:
        uas = sipp.start("uas_answer", local_port=trunk_port, keys={"rtpport": sink.port},
                         workdir=tmp_path)
        await uas.wait_ready()
        ...                              # drive a call through the switch to the trunk
        res = await uas.wait_async(20)   # or uas.stop() (SIGTERM by PID, then SIGKILL)
        res.check()

Scenarios (tests/peers/scenarios; each file's header comment documents its flow and keys)
---------
UAC (a phone calling the switch; a 401/407 challenge is answered when it comes, so they also
serve trunk-side calls that are not challenged; ``-s`` = called user, ``keys={"caller": ...}``
= From user, ``auth_user``/``auth_pass``):
  register_auth       REGISTER -> 401 -> REGISTER+auth -> 200 [-> Expires: 0 round if
                      keys unregister=yes]; keys expires
  uac_auth_call       call, hold -d ms, BYE (no RTP)        -- also the load-test shape
  uac_auth_pcap       call, play g711a.pcap (7 s PCMA) + RFC 2833 1,2,#, hold -d, BYE
  uac_auth_dtmf       call, RFC 2833 1,2,# only, hold -d, BYE
  uac_auth_recv_bye   call, then wait (60 s max) for the far side's BYE
  uac_auth_cancel     wait for 180, CANCEL, 200 + 487, ACK
  uac_auth_busy       expect 486          uac_auth_noanswer   expect 480 or 408
  uac_auth_notfound   expect 404 or 480
UAS (a trunk or phone behind the switch; SDP answer port = ``keys={"rtpport": sink.port}``):
  uas_answer          180, 200, ACK, waits for BYE
  uas_bye             180, 200, ACK, hold -d ms, sends BYE itself
  uas_busy            486 (other codes: render_scenario(..., {"486 Busy Here": "404 Not Found"}))
  uas_noanswer        180, waits for CANCEL (120 s max), 200 + 487
  uas_auth_challenge  401 (MD5), checks the re-INVITE's Authorization against keys
                      auth_user/auth_pass (403 and a failed call otherwise), then answers
  uas_registrar       401 then 200 for REGISTER (same keys; unregister=yes expects a 2nd one)

RTP verification scheme
-----------------------
SIPp cannot count or inspect the RTP it receives. So the SIPp UAS scenarios here advertise
``m=audio [rtpport]`` where ``rtpport`` is a ``-key`` value, and the *test* binds an
:class:`RtpSink` (a plain asyncio UDP socket, plus RTCP on port+1) on exactly that port.
Whatever the switch sends toward that leg lands in ``sink.packets`` (source address, PT, seq,
timestamp, SSRC, marker, payload), and the sink can send RTP back (``send``/``send_tone``/
``send_dtmf``) *from the advertised port*, so a switch that only accepts RTP from the address
the SDP named still accepts it. ``sink.audio()`` decodes G.711 for frequency checks
(tests/peers/audio.py), ``sink.dtmf_digits()`` decodes RFC 4733 events.

The SIPp UAC scenarios offer ``m=audio [media_port]`` (-mp, always allocated here) and play the
Debian pcaps with ``play_pcap_audio``: SIPp sends them through a raw socket (needs root) with the
source port set to -mp, to the address in the answer's SDP. :func:`read_pcap_rtp` parses those
pcaps so a test can compare what arrived at the far sink with what was played, payload by
payload (``g711a.pcap``: 236 PCMA packets; ``dtmf_2833_*.pcap``: 10 PT-101 packets each).

Ports: every run gets its own SIP port (``local_port``; allocated when not given), media port
range (-mp, 4 ports: SIPp binds mp and mp+2) and control port (-cp; SIPp otherwise binds
UDP 8888 and concurrent instances collide).

Exit status: SIPp 3.6.1 sometimes exits 0 although a call failed (e.g. a UAS call aborted by an
unexpected BYE), so :class:`SippResult` also parses the final "Successful call"/"Failed call"
counters from SIPp's screen dump, and ``ok`` requires both.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import itertools
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from . import audio
from .ports import free_port_range, free_udp_tcp_port

__all__ = [
    "PCAP_DIR",
    "SCENARIO_DIR",
    "RtpPacket",
    "RtpSink",
    "SippProcess",
    "SippResult",
    "arun",
    "available",
    "build_command",
    "pcap_payloads",
    "read_pcap_rtp",
    "read_stat_csv",
    "render_scenario",
    "run",
    "scenario_path",
    "split_messages",
    "start",
]

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
PCAP_DIR = Path("/usr/share/sip-tester")
INSTALL_HINT = "SIPp not installed: apt-get install sip-tester"

# Defaults for the -key keywords our scenarios use (an unknown [keyword] is a SIPp load error,
# unused -key values are harmless, so all of these are always passed).
DEFAULT_KEYS: dict[str, str] = {
    "caller": "sipp",        # From user of the uac_* scenarios
    "expires": "3600",       # register_auth / uas_registrar
    "unregister": "no",      # register_auth / uas_registrar: "yes" adds an Expires: 0 round
    "auth_user": "trunkuser",  # uas_auth_challenge / uas_registrar: expected credentials
    "auth_pass": "trunkpass",
}

_run_counter = itertools.count(1)


def available() -> bool:
    """True when the ``sipp`` binary is on PATH."""
    return shutil.which("sipp") is not None


def scenario_path(name: str | Path) -> Path:
    """``"uas_answer"``, ``"uas_answer.xml"`` or a path -> the scenario file path."""
    p = Path(name)
    if p.is_absolute() or p.exists():
        return p
    if p.suffix != ".xml":
        p = p.with_suffix(".xml")
    full = SCENARIO_DIR / p
    if not full.exists():
        raise FileNotFoundError(f"no SIPp scenario {full}")
    return full


def render_scenario(name: str | Path, workdir: str | Path,
                    replace: Mapping[str, str] | Iterable[tuple[str, str]]) -> Path:
    """Copy a scenario into ``workdir`` with literal text replacements; returns the new path.

    For what SIPp cannot take as a ``-key`` (it parses status codes and attribute values when
    it loads the file), e.g. a UAS rejecting with another status::

        path = render_scenario("uas_busy", tmp_path, {"486 Busy Here": "404 Not Found"})
        uas = sipp.start(path, ...)

    Every replaced text must occur in the file (a typo fails loudly).
    """
    src = scenario_path(name)
    text = src.read_text(encoding="iso-8859-1")
    pairs = list(replace.items()) if isinstance(replace, Mapping) else list(replace)
    for old, new in pairs:
        if old not in text:
            raise ValueError(f"{src.name}: {old!r} not found")
        text = text.replace(old, new)
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    dest = wd / f"{src.stem}-r{next(_run_counter)}.xml"
    dest.write_text(text, encoding="iso-8859-1")
    return dest


# --------------------------------------------------------------------------- command line


@dataclass
class _Plan:
    command: list[str]
    workdir: Path
    label: str
    local_port: int
    media_port: int
    control_port: int
    stdout_path: Path
    stderr_path: Path
    error_log: Path | None
    message_log: Path | None
    stat_csv: Path | None
    log_file: Path | None
    keys: dict[str, str]


def build_command(
    scenario: str | Path,
    remote: str | int | None = None,
    *,
    local_port: int | None = None,
    local_ip: str = "127.0.0.1",
    transport: str = "u1",
    media_port: int | None = None,
    control_port: int | None = None,
    calls: int | None = 1,
    rate: float | None = None,
    rate_period_ms: int | None = None,
    limit: int | None = None,
    duration_ms: int | None = None,
    service: str | None = None,
    auth_user: str | None = None,
    auth_pass: str | None = None,
    auth_uri: str | None = None,
    keys: Mapping[str, object] | None = None,
    variables: Mapping[str, object] | None = None,
    rtp_echo: bool = False,
    auto_answer: bool = True,
    trace_err: bool = True,
    trace_msg: bool = True,
    trace_stat: bool = False,
    trace_logs: bool = False,
    stat_period_s: int = 1,
    buff_size: int = 4194304,
    extra_args: Sequence[str] = (),
    workdir: str | Path | None = None,
) -> _Plan:
    """Build the SIPp command line (see :func:`run` for the meaning of the arguments)."""
    path = scenario_path(scenario)
    wd = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="sipp-"))
    wd.mkdir(parents=True, exist_ok=True)
    label = f"{path.stem}-{os.getpid()}-{next(_run_counter)}"
    local_port = local_port if local_port is not None else free_udp_tcp_port()
    media_port = media_port if media_port is not None else free_port_range(4)[0]
    control_port = control_port if control_port is not None else free_udp_tcp_port()

    merged = dict(DEFAULT_KEYS)
    if keys:
        merged.update({k: str(v) for k, v in keys.items()})
    if "rtpport" not in merged:
        # uas_* scenarios name the RTP port of their answer; give them a harmless free one.
        merged["rtpport"] = str(free_port_range(2)[0])

    cmd = ["sipp", "-sf", str(path), "-i", local_ip, "-mi", local_ip, "-p", str(local_port),
           "-t", transport, "-mp", str(media_port), "-ci", local_ip, "-cp", str(control_port),
           "-buff_size", str(buff_size), "-nostdin"]
    if calls is not None:
        cmd += ["-m", str(calls)]
    if rate is not None:
        cmd += ["-r", f"{rate:g}"]
    if rate_period_ms is not None:
        cmd += ["-rp", f"{rate_period_ms}ms"]
    if limit is not None:
        cmd += ["-l", str(limit)]
    if duration_ms is not None:
        cmd += ["-d", str(duration_ms)]
    if service is not None:
        cmd += ["-s", service]
    if auth_user is not None:
        cmd += ["-au", auth_user]
    if auth_pass is not None:
        cmd += ["-ap", auth_pass]
    if auth_uri is not None:
        cmd += ["-auth_uri", auth_uri]
    for key, value in merged.items():
        cmd += ["-key", key, value]
    for name, var in (variables or {}).items():
        cmd += ["-set", name, str(var)]
    if rtp_echo:
        cmd.append("-rtp_echo")
    if auto_answer:
        cmd.append("-aa")

    error_log = message_log = stat_csv = log_file = None
    if trace_err:
        error_log = wd / f"{label}_errors.log"
        cmd += ["-trace_err", "-error_file", str(error_log)]
    if trace_msg:
        message_log = wd / f"{label}_messages.log"
        cmd += ["-trace_msg", "-message_file", str(message_log)]
    if trace_stat:
        stat_csv = wd / f"{label}_stat.csv"
        cmd += ["-trace_stat", "-stf", str(stat_csv), "-fd", str(stat_period_s)]
    if trace_logs:
        log_file = wd / f"{label}_logs.log"
        cmd += ["-trace_logs", "-log_file", str(log_file)]
    cmd += list(extra_args)
    if remote is not None:
        target = f"127.0.0.1:{remote}" if isinstance(remote, int) else str(remote)
        cmd.append(target)
    return _Plan(cmd, wd, label, local_port, media_port, control_port,
                 wd / f"{label}_stdout.log", wd / f"{label}_stderr.log",
                 error_log, message_log, stat_csv, log_file, merged)


# --------------------------------------------------------------------------- results

_COUNTER_RE = re.compile(r"^\s*(Successful call|Failed call)\s*\|\s*(\d+)\s*\|\s*(\d+)", re.M)


def _read(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    return path.read_text(errors="replace")


def split_messages(log_text: str) -> list[tuple[str, str]]:
    """Split a SIPp ``-trace_msg`` log into ``(direction, message)`` pairs.

    ``direction`` is ``"sent"`` or ``"received"``; ``message`` is the SIP message text
    (start line, headers, body) with the SIPp framing lines removed.
    """
    out: list[tuple[str, str]] = []
    marker = re.compile(
        r"^-{5,}.*\n(?:UDP|TCP|TLS|SCTP) message (sent|received) "
        r"(?:\(\d+ bytes\)|\[\d+\] bytes ?):\n",
        re.M,
    )
    matches = list(marker.finditer(log_text))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(log_text)
        body = log_text[m.end():end].replace("\r\n", "\n").strip("\n")
        out.append((m.group(1), body))
    return out


@dataclass
class SippResult:
    """The outcome of one SIPp process."""

    command: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    elapsed: float
    timed_out: bool
    workdir: Path
    local_port: int
    media_port: int
    error_log: Path | None
    message_log: Path | None
    stat_csv: Path | None
    log_file: Path | None
    successful: int | None = None
    failed: int | None = None

    @property
    def ok(self) -> bool:
        """Exit code 0, not timed out, no failed call and at least one successful call."""
        return (
            self.returncode == 0
            and not self.timed_out
            and not self.failed
            and (self.successful is None or self.successful > 0)
        )

    def errors(self) -> str:
        """SIPp's ``-trace_err`` log (why calls failed), '' if none."""
        return _read(self.error_log)

    def messages(self) -> list[tuple[str, str]]:
        """Parsed ``-trace_msg`` log: ``[(direction, message_text), ...]``."""
        return split_messages(_read(self.message_log))

    def received(self, start: str = "") -> list[str]:
        """Received messages whose start line begins with ``start`` (e.g. "SIP/2.0 200")."""
        return [m for d, m in self.messages() if d == "received" and m.startswith(start)]

    def sent(self, start: str = "") -> list[str]:
        """Sent messages whose start line begins with ``start`` (e.g. "INVITE")."""
        return [m for d, m in self.messages() if d == "sent" and m.startswith(start)]

    def stats(self) -> list[dict[str, str]]:
        """Rows of the ``-trace_stat`` CSV (empty without ``trace_stat=True``)."""
        return read_stat_csv(self.stat_csv) if self.stat_csv else []

    def describe(self) -> str:
        """A diagnostic dump for assertion messages."""
        screen = self.stdout[-4000:]
        return (
            f"SIPp {' '.join(self.command)}\n"
            f"exit={self.returncode} timed_out={self.timed_out} "
            f"successful={self.successful} failed={self.failed} elapsed={self.elapsed:.1f}s\n"
            f"--- errors ({self.error_log}):\n{self.errors()[-6000:]}\n"
            f"--- stderr:\n{self.stderr[-2000:]}\n--- screen (tail):\n{screen}"
        )

    def check(self) -> SippResult:
        """Raise AssertionError with diagnostics unless :attr:`ok`; returns self."""
        if not self.ok:
            raise AssertionError(self.describe())
        return self


def read_stat_csv(path: str | Path) -> list[dict[str, str]]:
    """Read SIPp's ``-trace_stat`` file (``;``-separated, one header line) as dict rows.

    Column names are as SIPp writes them, e.g. ``"SuccessfulCall(C)"``, ``"FailedCall(P)"``,
    ``"CallRate(C)"``, ``"ResponseTime1(C)"``.
    """
    p = Path(path)
    if not p.exists():
        return []
    with p.open(newline="", errors="replace") as f:
        rows = list(csv.reader(f, delimiter=";"))
    if not rows:
        return []
    header = [h.strip() for h in rows[0]]
    return [
        {h: (r[i].strip() if i < len(r) else "") for i, h in enumerate(header) if h}
        for r in rows[1:]
        if any(c.strip() for c in r)
    ]


# --------------------------------------------------------------------------- processes


def _port_listening(port: int, transport: str) -> bool:
    """Whether something has bound ``port`` (read from /proc, never by binding it ourselves)."""
    want = f":{port:04X}"
    files = ["/proc/net/tcp", "/proc/net/tcp6"] if transport.startswith("t") else [
        "/proc/net/udp", "/proc/net/udp6"]
    for name in files:
        try:
            with open(name) as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) > 3 and parts[1].endswith(want):
                        if transport.startswith("t") and parts[3] != "0A":   # LISTEN
                            continue
                        return True
        except OSError:
            continue
    return False


class SippProcess:
    """A running SIPp (usually a UAS). Stop it with :meth:`stop`; collect with :meth:`wait`."""

    def __init__(self, plan: _Plan, proc: subprocess.Popen[bytes], started: float,
                 transport: str, stdout_f: Any, stderr_f: Any) -> None:
        self._plan = plan
        self.proc = proc
        self.pid = proc.pid
        self._started = started
        self._transport = transport
        self._stdout_f = stdout_f
        self._stderr_f = stderr_f
        self._timed_out = False
        self._result: SippResult | None = None

    @property
    def local_port(self) -> int:
        """SIP port SIPp listens on."""
        return self._plan.local_port

    @property
    def media_port(self) -> int:
        """-mp value ([media_port] in the scenario)."""
        return self._plan.media_port

    @property
    def keys(self) -> dict[str, str]:
        """The -key values passed (defaults included), e.g. ``keys["rtpport"]``."""
        return dict(self._plan.keys)

    @property
    def command(self) -> list[str]:
        """The command line."""
        return list(self._plan.command)

    def running(self) -> bool:
        """True while the process has not exited."""
        return self.proc.poll() is None

    def wait_ready_sync(self, timeout: float = 5.0) -> None:
        """Block until SIPp has bound its SIP port (or raise with its output)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("SIPp exited during start-up\n" + self._finish().describe())
            if _port_listening(self._plan.local_port, self._transport):
                return
            time.sleep(0.02)
        raise AssertionError(f"SIPp did not bind port {self._plan.local_port} in {timeout}s")

    async def wait_ready(self, timeout: float = 5.0) -> None:
        """Async :meth:`wait_ready_sync`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("SIPp exited during start-up\n" + self._finish().describe())
            if _port_listening(self._plan.local_port, self._transport):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"SIPp did not bind port {self._plan.local_port} in {timeout}s")

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def _kill_after_timeout(self) -> None:
        self._timed_out = True
        self._signal(signal.SIGTERM)      # SIPp prints its final statistics on SIGTERM
        try:
            self.proc.wait(3.0)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait()

    def _finish(self) -> SippResult:
        if self._result is not None:
            return self._result
        if self.proc.poll() is None:
            self.proc.wait()
        for f in (self._stdout_f, self._stderr_f):
            with contextlib.suppress(Exception):
                f.close()
        stdout = _read(self._plan.stdout_path)
        counters = {name: int(cum) for name, _periodic, cum in _COUNTER_RE.findall(stdout)}
        self._result = SippResult(
            command=self._plan.command,
            returncode=self.proc.returncode,
            stdout=stdout,
            stderr=_read(self._plan.stderr_path),
            elapsed=time.monotonic() - self._started,
            timed_out=self._timed_out,
            workdir=self._plan.workdir,
            local_port=self._plan.local_port,
            media_port=self._plan.media_port,
            error_log=self._plan.error_log,
            message_log=self._plan.message_log,
            stat_csv=self._plan.stat_csv,
            log_file=self._plan.log_file,
            successful=counters.get("Successful call"),
            failed=counters.get("Failed call"),
        )
        return self._result

    def wait(self, timeout: float = 30.0) -> SippResult:
        """Block until SIPp exits; after ``timeout`` s terminate it (result.timed_out)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill_after_timeout()
        return self._finish()

    async def wait_async(self, timeout: float = 30.0) -> SippResult:
        """Like :meth:`wait` without blocking the event loop."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() >= deadline:
                self._kill_after_timeout()
                break
            await asyncio.sleep(0.05)
        return self._finish()

    def stop(self, grace: float = 3.0) -> SippResult:
        """SIGTERM by PID (SIPp then prints its stats and exits), SIGKILL after ``grace`` s."""
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait()
        return self._finish()

    def __enter__(self) -> SippProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(scenario: str | Path, remote: str | int | None = None, **options: Any) -> SippProcess:
    """Start SIPp in the background and return a :class:`SippProcess` (no waiting).

    Same arguments as :func:`run` (minus ``timeout``). For a UAS, follow with
    ``await proc.wait_ready()`` before sending it traffic.
    """
    plan = build_command(scenario, remote, **options)
    stdout_f = plan.stdout_path.open("wb")
    stderr_f = plan.stderr_path.open("wb")
    proc = subprocess.Popen(
        plan.command, cwd=plan.workdir, stdin=subprocess.DEVNULL, stdout=stdout_f,
        stderr=stderr_f, start_new_session=True,
    )
    return SippProcess(plan, proc, time.monotonic(), options.get("transport", "u1"),
                       stdout_f, stderr_f)


def run(scenario: str | Path, remote: str | int | None = None, *, timeout: float = 30.0,
        **options: Any) -> SippResult:
    """Run SIPp to completion (blocking) and return a :class:`SippResult`.

    ``scenario``: a name in tests/peers/scenarios (``"uac_auth_call"``) or a path.
    ``remote``: ``"host:port"`` or a port on 127.0.0.1 (UAC target); None for a UAS.
    Options (all keyword): ``local_port`` (SIP port, -p; allocated if None), ``transport``
    ("u1" UDP | "t1" TCP | "un"/"tn"), ``media_port`` (-mp; allocated), ``calls`` (-m, default
    1), ``rate`` (-r calls per ``rate_period_ms``, default per second), ``limit`` (-l),
    ``duration_ms`` (-d: length of bare ``<pause/>``), ``service`` (-s: called user / AOR
    user), ``auth_user``/``auth_pass`` (-au/-ap), ``auth_uri`` (-auth_uri), ``keys`` (-key
    name value; defaults in DEFAULT_KEYS), ``variables`` (-set), ``rtp_echo`` (-rtp_echo),
    ``auto_answer`` (-aa, default on), ``trace_err``/``trace_msg`` (default on),
    ``trace_stat`` (-trace_stat -stf CSV -fd ``stat_period_s``), ``trace_logs``,
    ``extra_args``, ``workdir`` (where logs go; a temp dir if None).
    After ``timeout`` seconds SIPp is terminated and ``result.timed_out`` is set.
    """
    return start(scenario, remote, **options).wait(timeout)


async def arun(scenario: str | Path, remote: str | int | None = None, *, timeout: float = 30.0,
               **options: Any) -> SippResult:
    """:func:`run` for async tests: polls the process without blocking the event loop."""
    return await start(scenario, remote, **options).wait_async(timeout)


# --------------------------------------------------------------------------- RTP


@dataclass(frozen=True)
class RtpPacket:
    """One received (or pcap-read) RTP packet (RFC 3550 section 5.1 header fields)."""

    source: tuple[str, int]
    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    received_at: float = 0.0

    @classmethod
    def parse(cls, data: bytes, source: tuple[str, int], received_at: float = 0.0
              ) -> RtpPacket | None:
        """Parse an RTP packet (None if it is not RTP version 2)."""
        if len(data) < 12 or data[0] >> 6 != 2:
            return None
        b0, b1, seq, ts, ssrc = struct.unpack("!BBHII", data[:12])
        offset = 12 + 4 * (b0 & 0x0F)
        if b0 & 0x10:                                   # header extension (5.3.1)
            if len(data) < offset + 4:
                return None
            ext_words = struct.unpack("!H", data[offset + 2 : offset + 4])[0]
            offset += 4 + 4 * ext_words
        end = len(data)
        if b0 & 0x20 and end > offset:                  # padding (5.1)
            end -= data[-1]
        if offset > end:
            return None
        return cls(source, b1 & 0x7F, bool(b1 & 0x80), seq, ts, ssrc, data[offset:end],
                   received_at)


def read_pcap_rtp(path: str | Path) -> list[RtpPacket]:
    """The RTP packets of a pcap (Ethernet/IPv4/UDP, as the Debian SIPp pcaps), in file order."""
    data = Path(path).read_bytes()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a pcap file")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    out: list[RtpPacket] = []
    off = 24
    while off + 16 <= len(data):
        ts_s, ts_us, incl, _orig = struct.unpack(endian + "IIII", data[off : off + 16])
        off += 16
        frame = data[off : off + incl]
        off += incl
        if linktype == 1:                 # Ethernet
            ethertype = struct.unpack("!H", frame[12:14])[0]
            ip = frame[14:]
            if ethertype == 0x8100:
                ip = frame[18:]
        elif linktype == 113:             # Linux cooked
            ip = frame[16:]
        else:                             # raw IP
            ip = frame
        if not ip or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        udp = ip[(ip[0] & 0x0F) * 4 :]
        src_ip = ".".join(str(b) for b in ip[12:16])
        sport = struct.unpack("!H", udp[0:2])[0]
        pkt = RtpPacket.parse(udp[8:], (src_ip, sport), ts_s + ts_us / 1e6)
        if pkt is not None:
            out.append(pkt)
    return out


_DTMF_EVENTS = "0123456789*#ABCD"


class _SinkProtocol(asyncio.DatagramProtocol):
    def __init__(self, sink: RtpSink, rtcp: bool) -> None:
        self.sink = sink
        self.rtcp = rtcp

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        source = (str(addr[0]), int(addr[1]))
        if self.rtcp:
            self.sink.rtcp_packets.append((source, data))
            return
        self.sink._on_rtp(data, source)

    def error_received(self, exc: Exception) -> None:   # ICMP port unreachable etc.
        self.sink.errors.append(exc)


@dataclass
class _SendState:
    ssrc: int = field(default_factory=lambda: random.getrandbits(32))
    sequence: int = field(default_factory=lambda: random.getrandbits(16))
    timestamp: int = field(default_factory=lambda: random.getrandbits(32))


class RtpSink:
    """A test-owned RTP endpoint on 127.0.0.1:``port`` (+ RTCP on port+1).

    Records every RTP packet, optionally echoes them back to their source (``echo=True``),
    and sends RTP from the same port (so symmetric-RTP / source checks in the switch pass).
    Use as ``async with RtpSink() as sink:``; ``sink.port`` goes into the SDP (``rtpport``).
    """

    def __init__(self, port: int | None = None, *, host: str = "127.0.0.1",
                 echo: bool = False) -> None:
        self.host = host
        self.port = port if port is not None else free_port_range(2)[0]
        self.echo = echo
        self.packets: list[RtpPacket] = []
        self.rtcp_packets: list[tuple[tuple[str, int], bytes]] = []
        self.non_rtp: list[tuple[tuple[str, int], bytes]] = []
        self.errors: list[Exception] = []
        self._transport: asyncio.DatagramTransport | None = None
        self._rtcp_transport: asyncio.DatagramTransport | None = None
        self._arrived = asyncio.Event()
        self._send = _SendState()

    # lifecycle
    async def start(self) -> RtpSink:
        """Bind the RTP and RTCP sockets."""
        loop = asyncio.get_running_loop()
        t, _ = await loop.create_datagram_endpoint(
            lambda: _SinkProtocol(self, False), local_addr=(self.host, self.port))
        self._transport = t
        try:
            rt, _ = await loop.create_datagram_endpoint(
                lambda: _SinkProtocol(self, True), local_addr=(self.host, self.port + 1))
            self._rtcp_transport = rt
        except OSError:
            self._rtcp_transport = None   # RTCP is optional for our purposes
        return self

    def close(self) -> None:
        """Close both sockets."""
        for t in (self._transport, self._rtcp_transport):
            if t is not None:
                t.close()
        self._transport = self._rtcp_transport = None

    async def __aenter__(self) -> RtpSink:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # receiving
    def _on_rtp(self, data: bytes, source: tuple[str, int]) -> None:
        pkt = RtpPacket.parse(data, source, time.monotonic())
        if pkt is None:
            self.non_rtp.append((source, data))
            return
        self.packets.append(pkt)
        self._arrived.set()
        if self.echo and self._transport is not None:
            self._transport.sendto(data, source)

    def received(self, payload_type: int | None = None) -> list[RtpPacket]:
        """Packets received so far, optionally only one payload type."""
        if payload_type is None:
            return list(self.packets)
        return [p for p in self.packets if p.payload_type == payload_type]

    def count(self, payload_type: int | None = None) -> int:
        """Number of packets received (of one payload type)."""
        return len(self.received(payload_type))

    def payload_types(self) -> set[int]:
        """Distinct payload types seen."""
        return {p.payload_type for p in self.packets}

    def ssrcs(self) -> list[int]:
        """Distinct SSRCs in order of first appearance."""
        return list(dict.fromkeys(p.ssrc for p in self.packets))

    def sources(self) -> set[tuple[str, int]]:
        """Distinct (ip, port) sources."""
        return {p.source for p in self.packets}

    @property
    def last_source(self) -> tuple[str, int] | None:
        """Where the latest packet came from (the default destination of :meth:`send`)."""
        return self.packets[-1].source if self.packets else None

    async def wait_for(self, count: int = 1, *, payload_type: int | None = None,
                       timeout: float = 10.0) -> list[RtpPacket]:
        """Wait until ``count`` packets (of ``payload_type``) arrived; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.received(payload_type)
            if len(got) >= count:
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"RtpSink:{self.port} got {len(got)}/{count} packets"
                    f" (pt={payload_type}); all PTs seen: {sorted(self.payload_types())}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 0.2))

    async def wait_quiet(self, quiet: float = 0.5, timeout: float = 15.0) -> None:
        """Wait until no packet arrived for ``quiet`` seconds (a stream has ended)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self.packets[-1].received_at if self.packets else 0.0
            if self.packets and time.monotonic() - last >= quiet:
                return
            await asyncio.sleep(0.05)

    def audio(self, payload_type: int | None = None) -> npt.NDArray[np.float64]:
        """Decode received G.711 packets (PT 0 PCMU / 8 PCMA) in arrival order to floats."""
        chunks: list[npt.NDArray[np.int16]] = []
        for p in self.packets:
            if payload_type is not None and p.payload_type != payload_type:
                continue
            if p.payload_type == 0:
                chunks.append(audio.ulaw_decode(p.payload))
            elif p.payload_type == 8:
                chunks.append(audio.alaw_decode(p.payload))
        if not chunks:
            return np.zeros(0, dtype=np.float64)
        return np.concatenate(chunks).astype(np.float64) / 32768.0

    def dtmf_digits(self, payload_type: int | None = None) -> str:
        """RFC 4733 digits received, in order.

        One event is a run of packets with the same SSRC and RTP timestamp (RFC 4733 2.5.1.1);
        a packet without the End bit after an End packet of the same run starts a new event
        (the same pcap played twice repeats SSRC and timestamps). ``payload_type`` defaults to
        any 4-byte payload whose PT is not 0/8/13.
        """
        digits: list[str] = []
        last_key: tuple[int, int] | None = None
        last_end = False
        for p in self.packets:
            if payload_type is not None and p.payload_type != payload_type:
                continue
            if payload_type is None and (p.payload_type in (0, 8, 13) or len(p.payload) != 4):
                continue
            key = (p.ssrc, p.timestamp)
            end = bool(p.payload[1] & 0x80)
            if key != last_key or (last_end and not end):
                event = p.payload[0]
                digits.append(_DTMF_EVENTS[event] if event < len(_DTMF_EVENTS) else f"<{event}>")
            last_key, last_end = key, end
        return "".join(digits)

    # sending
    def send(self, payload: bytes, *, payload_type: int = 8, marker: bool = False,
             dest: tuple[str, int] | None = None, samples: int | None = None) -> None:
        """Send one RTP packet from the sink's port to ``dest`` (default: last source).

        ``samples`` advances the RTP timestamp (default ``len(payload)``, right for G.711).
        """
        if self._transport is None:
            raise RuntimeError("RtpSink not started")
        dest = dest or self.last_source
        if dest is None:
            raise RuntimeError("no destination: pass dest= or receive a packet first")
        st = self._send
        header = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | payload_type,
                             st.sequence & 0xFFFF, st.timestamp & 0xFFFFFFFF, st.ssrc)
        self._transport.sendto(header + payload, dest)
        st.sequence = (st.sequence + 1) & 0xFFFF
        st.timestamp = (st.timestamp + (len(payload) if samples is None else samples)) \
            & 0xFFFFFFFF

    async def send_tone(self, freq: float, seconds: float, *, payload_type: int = 8,
                        dest: tuple[str, int] | None = None, ptime_ms: int = 20,
                        amplitude: float = 0.5) -> int:
        """Send a G.711 sine tone, paced at ``ptime_ms``; returns the packet count."""
        samples = audio.tone_samples(freq, seconds, 8000, amplitude)
        encode = audio.alaw_encode if payload_type == 8 else audio.ulaw_encode
        per = 8 * ptime_ms
        n = 0
        t0 = time.monotonic()
        for i in range(0, len(samples) - per + 1, per):
            self.send(encode(samples[i : i + per]), payload_type=payload_type,
                      marker=(n == 0), dest=dest)
            n += 1
            delay = t0 + n * ptime_ms / 1000.0 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        return n

    async def send_dtmf(self, digit: str, *, payload_type: int = 101,
                        dest: tuple[str, int] | None = None, duration_ms: int = 100,
                        volume: int = 10) -> None:
        """Send one RFC 4733 event (start, updates every 20 ms, 3 end packets)."""
        event = _DTMF_EVENTS.index(digit.upper())
        steps = max(1, duration_ms // 20)
        st = self._send
        ts0 = st.timestamp
        for i in range(1, steps + 1):
            st.timestamp = ts0
            dur = i * 160
            self.send(bytes([event, volume & 0x3F]) + struct.pack("!H", dur),
                      payload_type=payload_type, marker=(i == 1), dest=dest, samples=0)
            await asyncio.sleep(0.02)
        for _ in range(3):       # the end packet is sent three times (RFC 4733 2.5.1.4)
            st.timestamp = ts0
            self.send(bytes([event, 0x80 | (volume & 0x3F)]) + struct.pack("!H", steps * 160),
                      payload_type=payload_type, dest=dest, samples=0)
        st.timestamp = ts0 + steps * 160


def pcap_payloads(paths: Iterable[str | Path]) -> list[bytes]:
    """Concatenated RTP payloads of several pcaps (to compare with what a sink received)."""
    return [p.payload for path in paths for p in read_pcap_rtp(path)]
