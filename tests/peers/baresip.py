"""Drive baresip 1.0 (Debian ``baresip-core``) as a headless softphone from async tests.

Each :class:`BaresipInstance` gets its own config directory, SIP port, RTP range and
``ctrl_tcp`` port, runs ``baresip -f DIR`` (stdin /dev/null, no tty needed) and is controlled
over ctrl_tcp: netstring-framed JSON commands ``{"command", "params", "token"}`` answered by
``{"response": true, "ok", "data", "token"}``; events ``{"event": true, "type": ...}`` arrive on
the same socket and are queued (``wait_event``).

Example::

    async with BaresipInstance(tmp_path / "alice", user="1001", password="pw",
                               registrar=f"127.0.0.1:{sw.sip_port}",
                               tone_hz=800) as alice:
        await alice.wait_event("REGISTER_OK")
        await alice.dial("1002")                 # -> sip:1002@<registrar>
        await alice.wait_event("CALL_ESTABLISHED")
        await alice.send_dtmf("5")
        await alice.hangup()

Audio: ``audio_source`` = a WAV (8 kHz mono 16-bit; baresip's aufile hangs up the call at end of
file, so make it long, e.g. ``write_tone_wav(p, 800, 60)``) or ``tone_hz`` = ausine endless tone
(48 kHz stereo source). ``record=True`` loads ``sndfile`` which writes, per call, what the
phone *hears* to ``<workdir>/rec/dump-*-dec.wav`` (and what it sends to ``*-enc.wav``);
``recorded_files()`` lists the ``-dec`` files, newest last.

Known event types (baresip 1.0): REGISTER_OK, REGISTER_FAIL, UNREGISTERING, CALL_INCOMING,
CALL_RINGING, CALL_PROGRESS, CALL_ESTABLISHED, CALL_CLOSED, CALL_DTMF_START, CALL_DTMF_END,
CALL_TRANSFER, ... Each event dict has "type", "class", "accountaor", "direction", "peeruri",
"id" and (for DTMF/close reasons) "param".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from .ports import free_port_range, free_udp_tcp_port

__all__ = ["INSTALL_HINT", "BaresipError", "BaresipInstance", "available"]

INSTALL_HINT = "baresip not installed: apt-get install baresip-core"
MODULE_PATH = "/usr/lib/baresip/modules"

Event = dict[str, Any]


def available() -> bool:
    """True when the ``baresip`` binary and its ctrl_tcp/sndfile modules are installed."""
    return shutil.which("baresip") is not None and all(
        os.path.exists(os.path.join(MODULE_PATH, m))
        for m in ("ctrl_tcp.so", "g711.so", "aufile.so", "sndfile.so")
    )


class BaresipError(RuntimeError):
    """baresip failed to start, a command failed, or an awaited event did not come."""


def _netstring(payload: bytes) -> bytes:
    return str(len(payload)).encode() + b":" + payload + b","


class BaresipInstance:
    """One headless baresip process (see the module docstring)."""

    def __init__(
        self,
        workdir: str | Path,
        *,
        user: str = "alice",
        password: str | None = None,
        auth_user: str | None = None,
        registrar: str | None = None,
        transport: str = "udp",
        sip_port: int | None = None,
        ctrl_port: int | None = None,
        rtp_range: tuple[int, int] | None = None,
        audio_source: str | Path | None = None,
        tone_hz: int | None = None,
        record: bool = True,
        answermode: str = "auto",
        codecs: Sequence[str] = ("PCMU", "PCMA"),
        regint: int = 600,
        display_name: str | None = None,
        extra_config: Sequence[str] = (),
        extra_account_params: str = "",
        tls_cafile: str | Path | None = None,
    ) -> None:
        """Prepare (do not start) an instance.

        ``registrar``: "host:port" to REGISTER to (None: no registration; the phone is then
        reachable directly at ``sip:<user>@127.0.0.1:<sip_port>``). ``transport``: "udp" |
        "tcp" | "tls" (used for REGISTER and for dialling bare numbers; for "tls" the
        ``registrar`` is the server's TLS "host:port" and ``tls_cafile`` the PEM CA baresip is
        given as ``sip_cafile``; baresip listens for TLS on ``sip_port + 1``).
        ``audio_source``: WAV path; ``tone_hz``: use ausine instead; neither: silence (aufile
        of a generated file is not made for you). ``answermode``: "auto" | "manual" (then use
        :meth:`accept`).
        """
        self.workdir = Path(workdir)
        self.user = user
        self.password = password
        self.auth_user = auth_user
        self.registrar = registrar
        self.transport = transport.lower()
        if self.transport not in ("udp", "tcp", "tls"):
            raise ValueError("transport must be 'udp', 'tcp' or 'tls'")
        self.tls_cafile = Path(tls_cafile) if tls_cafile is not None else None
        # sip_listen P also binds TCP P and TLS P+1: reserve two ports.
        self.sip_port = sip_port if sip_port is not None else free_port_range(2, even=False)[0]
        self.ctrl_port = ctrl_port if ctrl_port is not None else free_udp_tcp_port()
        self.rtp_range = rtp_range if rtp_range is not None else free_port_range(20)
        self.audio_source = Path(audio_source) if audio_source is not None else None
        self.tone_hz = tone_hz
        self.record = record
        self.answermode = answermode
        self.codecs = tuple(codecs)
        self.regint = regint
        self.display_name = display_name
        self.extra_config = tuple(extra_config)
        self.extra_account_params = extra_account_params
        self.rec_dir = self.workdir / "rec"
        self.log_path = self.workdir / "baresip.log"

        self.proc: subprocess.Popen[bytes] | None = None
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.all_events: list[Event] = []
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[Event]] = {}
        self._token = 0
        self._log_file: Any = None

    # ------------------------------------------------------------------ config

    @property
    def aor(self) -> str:
        """The account's address of record."""
        host = self.registrar or f"127.0.0.1:{self.sip_port}"
        return f"sip:{self.user}@{host}"

    @property
    def contact_uri(self) -> str:
        """Where this phone can be reached directly (no registrar involved)."""
        if self.transport == "tls":
            return f"sip:{self.user}@127.0.0.1:{self.sip_port + 1};transport=tls"
        suffix = ";transport=tcp" if self.transport == "tcp" else ""
        return f"sip:{self.user}@127.0.0.1:{self.sip_port}{suffix}"

    def config_text(self) -> str:
        """The ``config`` file content."""
        lines = [
            f"sip_listen 127.0.0.1:{self.sip_port}",
            "net_interface 127.0.0.1",
            f"rtp_ports {self.rtp_range[0]}-{self.rtp_range[1]}",
            f"module_path {MODULE_PATH}",
            "module g711.so",
            "module aubridge.so",
            "audio_player aubridge,nil",
        ]
        if self.tone_hz is not None:
            lines += ["module ausine.so", f"audio_source ausine,{self.tone_hz}",
                      "ausrc_srate 48000", "ausrc_channels 2"]
        elif self.audio_source is not None:
            lines += ["module aufile.so", f"audio_source aufile,{self.audio_source}"]
        else:
            lines += ["audio_source aubridge,nil"]
        if self.record:
            lines += ["module sndfile.so", f"snd_path {self.rec_dir}"]
        if self.tls_cafile is not None:
            lines += [f"sip_cafile {self.tls_cafile}"]
        lines += [
            "module_app account.so",
            "module_app menu.so",
            "module_app ctrl_tcp.so",
            f"ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}",
            "call_max_calls 4",
            *self.extra_config,
        ]
        return "\n".join(lines) + "\n"

    def account_line(self) -> str:
        """The ``accounts`` file line."""
        display = f'"{self.display_name}" ' if self.display_name else ""
        if self.registrar:
            uri = f"sip:{self.user}@{self.registrar}"
            if self.transport in ("tcp", "tls"):
                uri += f";transport={self.transport}"
            regint = self.regint
        else:
            uri = f"sip:{self.user}@127.0.0.1:{self.sip_port}"
            regint = 0
        params = [f"regint={regint}", f"answermode={self.answermode}",
                  f"audio_codecs={','.join(self.codecs)}"]
        if self.password is not None:
            params.insert(0, f"auth_pass={self.password}")
        if self.auth_user is not None:
            params.insert(0, f"auth_user={self.auth_user}")
        line = f"{display}<{uri}>;" + ";".join(params)
        if self.extra_account_params:
            line += ";" + self.extra_account_params.lstrip(";")
        return line + "\n"

    # ------------------------------------------------------------------ lifecycle

    async def start(self, timeout: float = 10.0) -> BaresipInstance:
        """Write config + accounts, launch ``baresip -f DIR`` and connect to ctrl_tcp."""
        if not available():
            raise BaresipError(INSTALL_HINT)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rec_dir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "config").write_text(self.config_text())
        # The account is created over ctrl_tcp (``uanew``) once we are connected: baresip
        # registers as soon as an account exists, and ctrl_tcp only forwards events to a
        # connected client, so an account from the accounts file would REGISTER before we
        # could see REGISTER_OK.
        (self.workdir / "accounts").write_text("")
        (self.workdir / "contacts").write_text("")
        self._log_file = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            ["baresip", "-f", str(self.workdir)],
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            cwd=self.workdir, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BaresipError(f"baresip exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self._reader, self._writer = await asyncio.open_connection(
                    "127.0.0.1", self.ctrl_port)
                break
            except OSError as exc:
                last_error = exc
                await asyncio.sleep(0.05)
        else:
            await self.stop()
            raise BaresipError(f"ctrl_tcp not reachable ({last_error}):\n{self.log()}")
        self._read_task = asyncio.create_task(self._read_loop())
        await self.command("uanew", self.account_line().strip())
        return self

    async def __aenter__(self) -> BaresipInstance:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def stop(self, grace: float = 1.5) -> int | None:
        """``quit`` over ctrl_tcp, then SIGTERM/SIGKILL by PID if it lingers; returns exit code.

        ``quit`` un-REGISTERs first; baresip waits for the answer, so with a registrar that is
        gone this takes ``grace`` seconds before the (forcing) SIGTERM.
        """
        proc = self.proc
        if proc is not None and proc.poll() is None and self._writer is not None:
            with contextlib.suppress(Exception):
                self._send_raw({"command": "quit", "params": "", "token": "quit"})
                await self._writer.drain()
        if proc is not None:
            deadline = time.monotonic() + grace
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if proc.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)
                end = time.monotonic() + 0.5
                while proc.poll() is None and time.monotonic() < end:
                    await asyncio.sleep(0.02)
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._read_task
            self._read_task = None
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(BaresipError("baresip stopped"))
        self._pending.clear()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return proc.returncode if proc is not None else None

    def log(self) -> str:
        """baresip's stdout/stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # ------------------------------------------------------------------ ctrl_tcp

    def _send_raw(self, obj: dict[str, str]) -> None:
        assert self._writer is not None
        self._writer.write(_netstring(json.dumps(obj).encode()))

    async def _read_loop(self) -> None:
        assert self._reader is not None
        reader = self._reader
        try:
            while True:
                head = await reader.readuntil(b":")
                length = int(head[:-1].strip() or b"0")
                body = await reader.readexactly(length + 1)   # payload + ","
                try:
                    msg = json.loads(body[:-1].decode("utf-8", "replace"))
                except ValueError:
                    continue
                if msg.get("response"):
                    fut = self._pending.pop(str(msg.get("token", "")), None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                elif msg.get("event"):
                    self.all_events.append(msg)
                    self.events.put_nowait(msg)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return

    async def command(self, cmd: str, params: str = "", timeout: float = 5.0) -> Event:
        """Send a ctrl_tcp command and return its response dict (``ok``, ``data``).

        Raises :class:`BaresipError` when the response says ``ok: false``.
        """
        if self._writer is None:
            raise BaresipError("not started")
        self._token += 1
        token = str(self._token)
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._pending[token] = fut
        self._send_raw({"command": cmd, "params": params, "token": token})
        await self._writer.drain()
        try:
            resp = await asyncio.wait_for(fut, timeout)
        except TimeoutError as exc:
            self._pending.pop(token, None)
            raise BaresipError(
                f"no response to {cmd!r} in {timeout}s\n{self.log()[-3000:]}") from exc
        if not resp.get("ok", False):
            raise BaresipError(f"{cmd} {params}: {resp.get('data')}")
        return resp

    async def wait_event(self, *types: str, timeout: float = 10.0,
                         predicate: Callable[[Event], bool] | None = None) -> Event:
        """Wait for the next event whose type is one of ``types`` (and matches ``predicate``).

        Events that do not match are skipped (they stay in :attr:`all_events`).
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [e.get("type") for e in self.all_events]
                raise BaresipError(f"{self.user}: no {types} event in {timeout}s; saw {seen}\n"
                                   f"{self.log()[-3000:]}")
            try:
                ev = await asyncio.wait_for(self.events.get(), remaining)
            except TimeoutError:
                continue
            if (not types or ev.get("type") in types) and (predicate is None or predicate(ev)):
                return ev

    def events_of(self, type_: str) -> list[Event]:
        """All events of one type received so far."""
        return [e for e in self.all_events if e.get("type") == type_]

    # ------------------------------------------------------------------ phone verbs

    def uri_for(self, target: str) -> str:
        """A dial string: ``target`` if it has a scheme, else ``sip:<target>@<registrar>``."""
        if ":" in target and target.split(":", 1)[0] in ("sip", "sips", "tel"):
            return target
        if self.registrar is None:
            raise ValueError("bare number dialled but no registrar configured")
        # baresip itself appends the account's ";transport=tcp" to a dialled URI
        return f"sip:{target}@{self.registrar}"

    async def dial(self, target: str) -> Event:
        """Place a call (``dial`` command) to a URI or, with a registrar, a bare number."""
        return await self.command("dial", self.uri_for(target))

    async def hangup(self) -> Event:
        """Hang up the current call."""
        return await self.command("hangup")

    async def accept(self) -> Event:
        """Answer the incoming call (answermode=manual)."""
        return await self.command("accept")

    async def send_dtmf(self, digit: str) -> Event:
        """Send one digit (RFC 2833/4733 telephone-event) on the current call (``sndcode``)."""
        return await self.command("sndcode", digit)

    async def reginfo(self) -> str:
        """The ``reginfo`` text (registration status)."""
        return str((await self.command("reginfo")).get("data", ""))

    async def listcalls(self) -> str:
        """The ``listcalls`` text."""
        return str((await self.command("listcalls")).get("data", ""))

    def recorded_files(self, kind: str = "dec") -> list[Path]:
        """sndfile recordings: ``kind="dec"`` = what was heard, ``"enc"`` = what was sent."""
        if not self.rec_dir.exists():
            return []
        return sorted(self.rec_dir.glob(f"dump-*-{kind}.wav"), key=lambda p: p.stat().st_mtime)
