"""Helpers shared by the benchmarks: free ports, child processes, CPU time, SIPp output.

Nothing here knows about a particular system under test; :mod:`bench.cps` composes it.
Everything runs on 127.0.0.1, and every process started here is stopped by its own PID
(SIGTERM, then SIGKILL after a grace period), never by name.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Listener ports (SIP, SIPp media/control, HTTP) come from here: below the RTP range we give
# the switch and below the kernel's ephemeral range, away from the test suite's 20000-32767.
PORT_MIN = 10000
PORT_MAX = 19999

_handed_out: set[int] = set()


# --------------------------------------------------------------------------- ports


def _can_bind(port: int, kind: int) -> bool:
    sock = socket.socket(socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def is_free(port: int) -> bool:
    """True when ``port`` can be bound on 127.0.0.1 for both UDP and TCP right now."""
    return _can_bind(port, socket.SOCK_DGRAM) and _can_bind(port, socket.SOCK_STREAM)


def free_ports(count: int = 1) -> int:
    """The first of ``count`` consecutive free ports (UDP+TCP), even, not handed out before."""
    for _ in range(2000):
        start = random.randrange(PORT_MIN, PORT_MAX - count) & ~1
        block = range(start, start + count)
        if any(p in _handed_out for p in block):
            continue
        if all(is_free(p) for p in block):
            _handed_out.update(block)
            return start
    raise RuntimeError(f"no {count} consecutive free ports in {PORT_MIN}-{PORT_MAX}")


def bound_udp_ports(lo: int, hi: int) -> int:
    """How many UDP sockets (IPv4 and IPv6) are bound to a local port in ``lo..hi`` now."""
    count = 0
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 1:
                port = int(parts[1].rsplit(":", 1)[1], 16)
                if lo <= port <= hi:
                    count += 1
    return count


# --------------------------------------------------------------------------- CPU time


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads), or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may contain spaces and parentheses: split after the last ')'.
    rest = raw.rsplit(")", 1)[1].split()
    utime, stime = int(rest[11]), int(rest[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU seconds of this process's reaped children (the SIPp runs of a step, say)."""
    usage = os.times()
    return usage.children_user + usage.children_system


def loadavg() -> float:
    """The 1-minute load average (context for noisy results on a shared machine)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


# --------------------------------------------------------------------------- processes


class Proc:
    """A child process with its output in a file, stopped by PID."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=cwd,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float) -> int | None:
        """The exit status, or None if still running after ``timeout`` seconds."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 5.0) -> int:
        """SIGTERM this PID, SIGKILL it after ``grace`` seconds; returns the exit status."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(timeout=5)
        return self.popen.returncode

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def wait_http_ok(url: str, timeout: float) -> bool:
    """Poll ``url`` until it answers 200 (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def sip_ping(port: int, timeout: float) -> bool:
    """Send SIP OPTIONS to 127.0.0.1:``port`` until any SIP response comes back."""
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((HOST, 0))
        local = sock.getsockname()[1]
        n = 0
        while time.monotonic() < deadline:
            n += 1
            msg = (
                f"OPTIONS sip:ping@{HOST}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {HOST}:{local};branch=z9hG4bK-bench-{os.getpid()}-{n}\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:bench@{HOST}:{local}>;tag=bench{n}\r\n"
                f"To: <sip:ping@{HOST}:{port}>\r\n"
                f"Call-ID: bench-ping-{os.getpid()}-{n}@{HOST}\r\n"
                f"CSeq: {n} OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
            with contextlib.suppress(OSError):
                sock.sendto(msg, (HOST, port))
            sock.settimeout(0.3)
            try:
                data = sock.recv(65535)
            except (TimeoutError, OSError):
                continue
            if data.startswith(b"SIP/2.0 "):
                return True
        return False
    finally:
        sock.close()


# --------------------------------------------------------------------------- SIPp output


def sipp_binary() -> str | None:
    """Path of ``sipp`` or None."""
    return shutil.which("sipp")


def read_stat_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a SIPp ``-trace_stat`` CSV (``;``-separated) as dicts, oldest first."""
    try:
        text = path.read_text(encoding="iso-8859-1")
    except OSError:
        return []
    rows = list(csv.reader(text.splitlines(), delimiter=";"))
    if len(rows) < 2:
        return []
    header = rows[0]
    return [dict(zip(header, row, strict=False)) for row in rows[1:] if len(row) >= len(header) - 1]


def stat_int(row: Mapping[str, str], column: str) -> int:
    """An integer counter from a stat row (0 when missing or not a number)."""
    try:
        return int(row.get(column, "0") or 0)
    except ValueError:
        return 0


@dataclass
class SippCounters:
    """Cumulative counters from the last row of a SIPp stat CSV."""

    created: int = 0
    successful: int = 0
    failed: int = 0
    retransmissions: int = 0
    dead_call_msgs: int = 0
    out_of_call_msgs: int = 0
    found: bool = False

    @classmethod
    def from_csv(cls, path: Path) -> SippCounters:
        rows = read_stat_csv(path)
        if not rows:
            return cls()
        last = rows[-1]
        return cls(
            created=stat_int(last, "TotalCallCreated"),
            successful=stat_int(last, "SuccessfulCall(C)"),
            failed=stat_int(last, "FailedCall(C)"),
            retransmissions=stat_int(last, "Retransmissions(C)"),
            dead_call_msgs=stat_int(last, "DeadCallMsgs(C)"),
            out_of_call_msgs=stat_int(last, "OutOfCallMsgs(C)"),
            found=True,
        )


_UNEXPECTED_RE = re.compile(
    r"Continuing call on unexpected message.*?received '(SIP/2\.0 (\d{3})|[A-Z]+ )", re.S
)


def count_unexpected(error_file: Path) -> tuple[int, int]:
    """(late provisional responses, other messages) SIPp ignored as unexpected in a call.

    Needs ``-default_behaviors all,-abortunexp``: SIPp then logs "Continuing call on
    unexpected message" instead of aborting the call.
    """
    try:
        text = error_file.read_text(encoding="iso-8859-1", errors="replace")
    except OSError:
        return 0, 0
    late = other = 0
    for match in _UNEXPECTED_RE.finditer(text):
        status = match.group(2)
        if status is not None and status.startswith("1"):
            late += 1
        else:
            other += 1
    return late, other


def read_rtt(directory: Path, pattern: str = "*_rtt.csv") -> list[float]:
    """Every response time (ms) from SIPp ``-trace_rtt`` files in ``directory``."""
    values: list[float] = []
    for path in sorted(directory.glob(pattern)):
        with open(path, encoding="iso-8859-1") as fh:
            for line in fh:
                parts = line.strip().split(";")
                if len(parts) >= 2:
                    try:
                        values.append(float(parts[1]))
                    except ValueError:
                        continue  # the header
    return values


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class SippCommand:
    """A SIPp command line for one side of a step (see :meth:`argv`)."""

    scenario: Path
    local_port: int
    media_port: int
    control_port: int
    workdir: Path
    name: str
    remote: str | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def stat_file(self) -> Path:
        return self.workdir / f"{self.name}_stat.csv"

    @property
    def error_file(self) -> Path:
        return self.workdir / f"{self.name}_errors.log"

    @property
    def screen_file(self) -> Path:
        return self.workdir / f"{self.name}_screen.log"

    def argv(self, sipp: str) -> list[str]:
        argv = [sipp, "-sf", str(self.scenario)]
        if self.remote:
            argv.append(self.remote)
        argv += [
            "-i", HOST, "-mi", HOST, "-p", str(self.local_port), "-t", "u1",
            "-mp", str(self.media_port), "-cp", str(self.control_port),
            "-buff_size", "4194304", "-nostdin",
            "-trace_stat", "-stf", str(self.stat_file), "-fd", "1",
            "-trace_err", "-error_file", str(self.error_file),
            "-trace_screen", "-screen_file", str(self.screen_file),
        ]  # fmt: skip
        return argv + self.extra


def write_csv(path: Path, rows: Iterable[Mapping[str, object]], columns: Sequence[str]) -> None:
    """Write ``rows`` (dicts) with ``columns`` to ``path``."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


# --------------------------------------------------------------------------- profiles

_FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    """``"func (path/to/file.py:123)"`` -> ``"func (to/file.py)"`` (per function, not line)."""
    match = _FRAME_RE.match(frame.strip())
    if not match:
        return frame.strip()
    parts = Path(match["file"]).parts
    return f"{match['func']} ({'/'.join(parts[-2:])})"


def summarize_profile(raw: Path, top: int = 15) -> dict[str, object]:
    """Top functions of a py-spy ``--format raw`` (collapsed stacks) profile.

    ``self`` is the share of samples whose innermost frame is in the function, ``total`` the
    share of samples with the function anywhere on the stack (both in % of all samples).
    """
    self_count: dict[str, int] = {}
    total_count: dict[str, int] = {}
    samples = 0
    try:
        lines = raw.read_text(errors="replace").splitlines()
    except OSError:
        return {"samples": 0, "self": [], "total": []}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if not frames:
            continue
        samples += count
        self_count[frames[-1]] = self_count.get(frames[-1], 0) + count
        for name in set(frames):
            total_count[name] = total_count.get(name, 0) + count

    def ranked(counts: dict[str, int]) -> list[tuple[str, float]]:
        pairs = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[:top]
        return [(name, round(100.0 * n / samples, 1)) for name, n in pairs] if samples else []

    return {"samples": samples, "self": ranked(self_count), "total": ranked(total_count)}
