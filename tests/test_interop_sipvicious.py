"""Interop: the signalling defences attacked with SIPVicious (PyPI ``sipvicious`` 0.3.x).

The same attacks as ``tests/test_interop_security.py`` but driven by the third-party toolkit
that real scanners use (its requests carry ``User-Agent: friendly-scanner``). Addresses: the
attacker is 127.0.0.2, the legitimate phone (SIPp) 127.0.0.3, svmap's scan comes from a fresh
127.0.0.5 and the svcrack control run from 127.0.0.6.

* ``svwar`` (extension enumeration, REGISTER, INVITE and OPTIONS) identifies no extension, and
  what it received for the real extensions equals what it received for its bogus user. A fake
  "leaky" registrar (404 for unknown users) shows that the same invocation and output parsing
  DO report extensions when the answers differ.
* ``svcrack`` against extension 1001 with a dictionary whose right password sits after the ban
  limit: no password found, 127.0.0.2 banned by the digest-failure limit and answered nothing
  after that, and the real phone still registers. A control run (the right password before
  the limit, from another address, against 1002) shows svcrack cracks it when it can.
* ``svmap`` (a scan) finds the SIP server (expected) but neither crashes nor bans anything,
  and the phone still registers.

SIPVicious 0.3.8's svwar and svcrack accept ``-b/--bindingip`` but never hand it to their
scanner class (only svmap does), so they would send from the kernel's choice, 127.0.0.1 - the
switch's own address, which is never banned. :data:`LAUNCHER` runs the tools with the option
honoured. CI sizes are small; the issue's full run is
``SECURITY_SIPVICIOUS_PASSWORDS=10000 pytest tests/test_interop_sipvicious.py -k svcrack -s``.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_interop_security import (
    ATTACKER,
    PHONE,
    _normalise,
    _security_switch,
    _sipp_register,
)

try:
    from peers import sipp
    from peers.ports import free_udp_tcp_port
except ModuleNotFoundError:  # pragma: no cover
    from tests.peers import sipp
    from tests.peers.ports import free_udp_tcp_port

HAVE_SIPVICIOUS = importlib.util.find_spec("sipvicious") is not None

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(not HAVE_SIPVICIOUS,
                       reason="sipvicious is not installed (pip install sipvicious, or the "
                              "'test' extra); these tests drive its svwar/svcrack/svmap"),
    pytest.mark.skipif(not sipp.available(), reason=sipp.INSTALL_HINT),
]

SCANNER = "127.0.0.5"
CONTROL = "127.0.0.6"
# Dictionary size for svcrack (the right password is placed after the ban limit).
PASSWORDS = int(os.environ.get("SECURITY_SIPVICIOUS_PASSWORDS", "300"))
# The switch's answers for these are compared with svwar's bogus user one by one.
KNOWN = ("1001", "1002")
UNKNOWN = ("1000", "1003", "4711", "99999")
SWEEP = "1000-1199"  # a range around the real extensions for the sweeps

# Runs sipvicious tool ``argv[1]`` bound to ``argv[2]``: svwar/svcrack 0.3.8 parse -b but do
# not pass it to their scanner class, so the constructor gets it here (svmap already passes it).
LAUNCHER = r"""
import importlib, sys
tool, ip, *rest = sys.argv[1:]
mod = importlib.import_module("sipvicious." + tool)
cls = getattr(mod, {"svwar": "TakeASip", "svcrack": "ASipOfRedWine", "svmap": "DrinkOrSip"}[tool])
init = cls.__init__
def bound_init(self, *args, **kwargs):
    kwargs.setdefault("bindingip", ip)
    init(self, *args, **kwargs)
cls.__init__ = bound_init
sys.argv = ["sipvicious_" + tool, "-b", ip, *rest]
mod.main()
"""


@dataclass
class ToolRun:
    """One sipvicious run: exit code and output."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (f"{' '.join(self.args)} -> rc {self.returncode}\n--- stdout\n"
                f"{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}")

    def received(self) -> list[bytes]:
        """The SIP messages the tool printed with ``--debug`` (``b'...'`` repr lines)."""
        out: list[bytes] = []
        for line in self.stdout.splitlines():
            if line.startswith(("b'", 'b"')):
                value = ast.literal_eval(line)
                assert isinstance(value, bytes)
                out.append(value)
        return out


async def _tool(tool: str, ip: str, args: Iterable[str], timeout: float) -> ToolRun:
    argv = [tool, ip, *args]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LAUNCHER, *argv, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return ToolRun(argv, proc.returncode, out.decode(errors="replace"),
                   err.decode(errors="replace"))


# svwar reports an extension in its log ("extension '1001' exists - requires authentication",
# "... probably exists but the response is unexpected") and in a final table
# "| 1001      | reqauth        |"; it exits 40 once any answer differed from its bogus user's.
_SVWAR_LOG = re.compile(r"extension '([^']+)' (?:exists|probably exists)")
_SVWAR_ROW = re.compile(r"^\|\s*(\S+)\s*\|\s*(reqauth|noauth|weird)\s*\|", re.M)


def svwar_found(run: ToolRun) -> set[str]:
    """The extensions svwar says exist, from its log and its result table."""
    return set(_SVWAR_LOG.findall(run.stderr)) | {m[0] for m in _SVWAR_ROW.findall(run.stdout)}


async def svwar(port: int, extensions: str, method: str, *, force: bool = False,
                ip: str = ATTACKER) -> ToolRun:
    args = ["-P", str(free_udp_tcp_port()), "-p", str(port), "-e", extensions, "-m", method,
            "--debug", "--maximumtime", "3", "-vv"]
    if force:
        args.append("--force")
    return await _tool("svwar", ip, [*args, "127.0.0.1"], timeout=60)


_SVCRACK_FOUND = re.compile(r"The password for (\S+) is (\S+)")
_SVCRACK_ROW = re.compile(r"^\|\s*(\S+)\s*\|\s*(\S+)\s*\|", re.M)


def svcrack_found(run: ToolRun) -> dict[str, str]:
    """The passwords svcrack says it cracked, from its log and its result table."""
    found = dict(_SVCRACK_FOUND.findall(run.stderr))
    for user, password in _SVCRACK_ROW.findall(run.stdout):
        if user != "Extension":
            found[user] = password
    return found


# --------------------------------------------------------------------------- svwar


def _user_free(message: bytes, user: str) -> bytes:
    """``_normalise`` plus Call-ID (svwar picks a random one per request)."""
    message = re.sub(rb"(?im)^(Call-ID:\s*).*$", rb"\1*\r", message)
    return _normalise(message, user)


def _user_of(message: bytes) -> str:
    m = re.search(rb'(?im)^From:\s*"?([^"<]*)"?\s*<sip:([^@>]+)@', message)
    assert m, message
    return m.group(2).decode()


class _LeakyRegistrar(asyncio.DatagramProtocol):
    """What svwar is made for: 401/407 for known users, 404 for everyone else."""

    def __init__(self, known: Iterable[str]) -> None:
        self.known = set(known)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        text = data.decode(errors="replace")
        method = text.split(" ", 1)[0]
        if method in ("ACK", "SIP/2.0"):
            return
        headers: dict[str, str] = {}
        for line in text.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if value:
                headers.setdefault(name.strip().lower(), value.strip())
        m = re.search(r"sip:([^@>]+)@", headers.get("to", ""))
        user = m.group(1) if m else ""
        if method == "CANCEL":
            status, extra = "200 OK", []
        elif user in self.known and method == "INVITE":
            status = "407 Proxy Authentication Required"
            extra = ['Proxy-Authenticate: Digest realm="leaky", nonce="abc"']
        elif user in self.known:
            status, extra = "401 Unauthorized", ['WWW-Authenticate: Digest realm="leaky", '
                                                 'nonce="abc"']
        else:
            status, extra = "404 Not Found", []
        lines = [f"SIP/2.0 {status}", f"Via: {headers.get('via', '')}",
                 f"From: {headers.get('from', '')}", f"To: {headers.get('to', '')};tag=lk1",
                 f"Call-ID: {headers.get('call-id', '')}", f"CSeq: {headers.get('cseq', '')}",
                 *extra, "Content-Length: 0"]
        assert self.transport is not None
        self.transport.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), addr)


async def test_svwar_control_leaky_registrar_is_enumerated() -> None:
    """The sub-check that makes the next test meaningful: same svwar invocations and parsing,
    against a registrar that answers unknown users differently, DO find the extensions."""
    port = free_udp_tcp_port()
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _LeakyRegistrar(KNOWN), local_addr=("127.0.0.1", port))
    try:
        for method in ("REGISTER", "INVITE"):
            run = await svwar(port, SWEEP, method)
            print(f"svwar control ({method}) on a leaky registrar: found "
                  f"{sorted(svwar_found(run))}, rc {run.returncode}")
            assert svwar_found(run) == set(KNOWN), run.describe()
            assert run.returncode == 40, run.describe()  # svwar's "found something" code
            # A 401 for a real extension and a 404 for the bogus one: the _user_free
            # comparison of the next test would have caught it too.
            received = run.received()
            by_user = {_user_of(m): m for m in received}
            assert _user_free(by_user["1001"], "1001") != _user_free(received[0],
                                                                      _user_of(received[0]))
    finally:
        transport.close()


async def test_svwar_finds_no_extension(tmp_path: Path) -> None:
    # The flood limit is raised so that svwar sees an answer to every request (with the
    # default limit a sweep would be banned after 16 requests and "find nothing" trivially).
    async with _security_switch(tmp_path, flood_limit=1_000_000) as sw:
        port = sw.sip_port
        # 1001 is registered (svwar INVITEs must not reveal a live phone either).
        (await _sipp_register(sw, tmp_path, "before")).check()
        guard = sw.sw.security
        summary: list[str] = []

        # 1. What an attacker runs first: a sweep. svwar's sanity check sends a bogus user
        # first; because the switch challenges it like any real one, svwar gives up.
        for method in ("REGISTER", "INVITE"):
            run = await svwar(port, SWEEP, method)
            assert svwar_found(run) == set(), run.describe()
            assert run.returncode != 40, run.describe()
            assert "authentication request for an unknown extension" in run.stderr, \
                run.describe()
            finals = [m for m in run.received() if not m.startswith(b"SIP/2.0 1")]
            assert len(finals) == 1, run.describe()  # the bogus user's challenge, no more
            assert b"received=" + ATTACKER.encode() in finals[0], finals[0]  # see LAUNCHER
            summary.append(f"{method} sweep {SWEEP}: refused after the bogus user's "
                           f"{finals[0].split(b' ', 2)[1].decode()}")

        # 2. --force: svwar then compares each extension's answer with the bogus user's. With
        # a 401/407 baseline it stops at the first extension whose answer equals it ("unknown
        # response"), so each probe gets its own run: the known extensions first of all.
        for method in ("REGISTER", "INVITE"):
            statuses: dict[str, str] = {}
            for ext in (*KNOWN, *UNKNOWN):
                run = await svwar(port, ext, method, force=True)
                assert svwar_found(run) == set(), run.describe()
                assert run.returncode != 40, run.describe()
                finals = [m for m in run.received() if not m.startswith(b"SIP/2.0 1")]
                by_user = {_user_of(m): m for m in finals}
                assert ext in by_user, run.describe()  # svwar did get this extension's answer
                bogus = [u for u in by_user if u != ext]
                assert len(bogus) == 1, run.describe()
                # Same status and same headers (but for nonce/tag/branch/Call-ID) as svwar's
                # random bogus user: the only thing svwar (or anyone) could tell them apart by.
                assert _user_free(by_user[ext], ext) == _user_free(by_user[bogus[0]],
                                                                   bogus[0]), run.describe()
                statuses[ext] = by_user[ext].split(b"\r\n", 1)[0].decode()
            assert len(set(statuses.values())) == 1, statuses
            summary.append(f"{method} --force per extension: {statuses}")

        # 3. OPTIONS: svwar's baseline is a 200, so it does sweep the whole range.
        run = await svwar(port, SWEEP, "OPTIONS")
        assert svwar_found(run) == set(), run.describe()
        lo, hi = (int(x) for x in SWEEP.split("-"))
        answered = {_user_of(m) for m in run.received()}
        assert {str(n) for n in range(lo, hi + 1)} <= answered, run.describe()
        assert {m.split(b"\r\n", 1)[0] for m in run.received()} == {b"SIP/2.0 200 OK"}
        summary.append(f"OPTIONS sweep {SWEEP}: {len(run.received())} answers, all 200, "
                       f"found nothing")

        stats = guard.stats()
        print("svwar: " + "; ".join(summary) + f"; switch stats {stats}")
        assert not stats.get("auth_failures") and not stats.get("banned"), stats


# --------------------------------------------------------------------------- svcrack


def _dictionary(path: Path, wrong: int, right: str, position: int) -> Path:
    words = [f"guess{i:05d}" for i in range(wrong)]
    words.insert(position, right)
    path.write_text("\n".join(words) + "\n")
    return path


def _tried(run: ToolRun) -> list[str]:
    return re.findall(r"DEBUG:ASipOfRedWine:trying (\S+)", run.stderr)


def _responses(run: ToolRun) -> list[str]:
    return re.findall(r"DEBUG:ASipOfRedWine:Received response: SIP/2\.0 (\d{3})", run.stderr)


async def svcrack(port: int, ip: str, user: str, dictionary: Path, *, reuse_nonce: bool,
                  max_quiet: int = 2) -> ToolRun:
    args = ["-P", str(free_udp_tcp_port()), "-p", str(port), "-u", user, "-d", str(dictionary),
            "-vvv", "--maximumtime", str(max_quiet), "-t", "0.002"]
    if reuse_nonce:
        args.append("-n")
    return await _tool("svcrack", ip, [*args, "127.0.0.1"], timeout=max_quiet + 90)


@pytest.mark.parametrize("reuse_nonce", [False, True], ids=["fresh-nonce", "reuse-nonce"])
async def test_svcrack_banned_real_user_still_registers(tmp_path: Path,
                                                        reuse_nonce: bool) -> None:
    # The flood limit is raised so that this test sees the digest-failure limit alone
    # (svcrack sends a challenge-fetching REGISTER before every guess, and with -n it sends
    # as fast as it can: the default flood limit would ban it first).
    async with _security_switch(tmp_path, flood_limit=1_000_000) as sw:
        guard = sw.sw.security
        limit = sw.config.security.auth_source_limit
        (await _sipp_register(sw, tmp_path, "before")).check()

        # Control: svcrack does crack a password it reaches before any limit (another source,
        # the other extension), so "found nothing" below means the switch stopped it.
        control = await svcrack(sw.sip_port, CONTROL, "1002",
                                _dictionary(tmp_path / "control.txt", 5, sw.passwords["1002"],
                                            2), reuse_nonce=reuse_nonce)
        assert svcrack_found(control) == {"1002": sw.passwords["1002"]}, control.describe()
        assert control.returncode == 40, control.describe()  # svcrack's "cracked" code
        failures_before = guard.stats().get("auth_failures", 0)

        # The attack: the right password sits 5 guesses after the ban limit.
        position = limit + 5
        dictionary = _dictionary(tmp_path / "words.txt", PASSWORDS, sw.passwords["1001"],
                                 position)
        # svcrack stops after `quiet` seconds without an answer; with -n it must have time
        # to send the whole dictionary (at most 500/s with -t 0.002).
        quiet = 2 + PASSWORDS // 200 if reuse_nonce else 2
        run = await svcrack(sw.sip_port, ATTACKER, "1001", dictionary,
                            reuse_nonce=reuse_nonce, max_quiet=quiet)
        tried = _tried(run)
        responses = _responses(run)
        stats = guard.stats()
        print(f"svcrack ({'-n' if reuse_nonce else 'fresh nonce'}): dictionary of "
              f"{PASSWORDS + 1} with the right password at #{position + 1}; svcrack sent "
              f"{len(tried)} guesses and {run.stderr.count('auth=False')} challenge requests,"
              f" received {len(responses)} answers "
              f"{ {s: responses.count(s) for s in sorted(set(responses))} }; result "
              f"{svcrack_found(run) or 'nothing'} rc {run.returncode}; switch stats {stats}")

        # Zero successes: svcrack found nothing, the switch never said 200 to it.
        assert svcrack_found(run) == {}, run.describe()
        assert "found nothing" in run.stderr, run.describe()
        assert run.returncode != 40, run.describe()
        assert "200" not in responses, run.describe()
        # Banned by the digest-failure limit: the first limit-1 guesses got their 403, the
        # limit-th banned the source, and nothing at all was answered after it (svcrack
        # stopped because it heard nothing for `quiet` seconds).
        assert len(tried) >= limit, run.describe()
        assert responses.count("403") == limit - 1, run.describe()
        assert stats["auth_failures"] - failures_before == limit, stats
        assert stats["bans_auth"] == 1 and not stats.get("bans_flood"), stats
        assert guard.bans.is_banned(ATTACKER, asyncio.get_running_loop().time())
        assert stats["dropped_banned"] >= 1, stats
        if not reuse_nonce:
            # Each guess needs a fresh challenge, which a banned source never gets: svcrack
            # stopped because it heard nothing for `quiet` seconds, at the limit-th guess.
            assert "since we last received a response" in run.stderr, run.describe()
        else:
            # svcrack -n does not wait for answers: it sent the whole dictionary, the right
            # password included, after the ban, and all of that was dropped unanswered.
            assert "no more passwords" in run.stderr, run.describe()
            assert len(tried) == PASSWORDS + 1, run.describe()
            assert sw.passwords["1001"] in tried, run.describe()
            assert tried.index(sw.passwords["1001"]) >= limit
            assert stats["dropped_banned"] >= len(tried) - limit, stats

        # The real phone is not locked out (the account is throttled to its known addresses).
        (await _sipp_register(sw, tmp_path, "after")).check()
        assert PHONE not in guard.bans and CONTROL not in guard.bans


# --------------------------------------------------------------------------- svmap


async def test_svmap_scan_does_not_harm_the_switch(tmp_path: Path) -> None:
    async with _security_switch(tmp_path) as sw:
        guard = sw.sw.security
        results: dict[str, str] = {}
        for method in ("OPTIONS", "INVITE"):
            run = await _tool("svmap", SCANNER, [
                "-P", str(free_udp_tcp_port()), "-p", str(sw.sip_port), "-m", method, "-d",
                "127.0.0.1"], timeout=60)
            assert run.returncode in (0, 40), run.describe()  # no traceback, no "fatal"
            assert "Traceback" not in run.stderr, run.describe()
            rows = [line for line in run.stdout.splitlines()
                    if line.startswith("|") and f"127.0.0.1:{sw.sip_port}" in line]
            # svmap does find a SIP server there: that is expected and fine.
            assert len(rows) == 1, run.describe()
            results[method] = re.sub(r"\s*\|\s*", " | ", rows[0]).strip(" |")
            received = run.received()
            assert received, run.describe()
            assert b"received=" + SCANNER.encode() in received[0], received[0]
            first_line = received[0].split(b"\r\n", 1)[0].decode()
            results[method] += f" ({first_line})"
        stats = guard.stats()
        # What the scan learnt: "SIP device at this address:port, user agent unknown" (the
        # switch sends no Server/User-Agent header, so no product name or version).
        print(f"svmap from {SCANNER}: {results}; switch stats {stats}")
        # Three requests are far below any limit: nothing banned, and the switch still serves.
        assert not stats.get("bans_flood") and not stats.get("bans_auth"), stats
        assert SCANNER not in guard.bans
        (await _sipp_register(sw, tmp_path, "after")).check()
