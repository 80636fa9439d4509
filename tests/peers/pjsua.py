"""pjsua2 (PJSIP 2.15, ``pip install pjsua2-python``) as a peer, run in a child process.

pjsua2 is not asyncio-friendly (it wants to own its thread and a libHandleEvents() pump) and a
process can hold one PJSIP library, so each operation runs in a child process::

    python tests/peers/pjsua.py '<json params>'      (what the parent side runs)

The child prints JSON lines on stdout: progress events ``{"event": "...", ...}`` and, last,
``{"result": {...}}``. This file is self-contained (stdlib + pjsua2) so the child works whatever
the import path looks like. The null sound device is used; audio goes through
AudioMediaPlayer (a WAV we transmit, looped) and AudioMediaRecorder (a WAV of what we hear,
16-bit mono at the conference-bridge rate, 16 kHz by default).

Async API for tests (the parent side)::

    res = await pjsua.register(registrar="127.0.0.1:5060", user="1001", password="pw",
                               workdir=tmp_path)
    assert res["reg_status"] == 200

    res = await pjsua.call("sip:1002@127.0.0.1:5060", registrar=..., user="1001",
                           password="pw", play=tone_wav, record=tmp_path / "heard.wav",
                           hold=3.0, dtmf="12#", workdir=tmp_path)
    assert res["connected"] and res["final_status"] == 200

    callee = await pjsua.start_answerer(registrar=..., user="1002", password="pw",
                                        play=..., record=..., hold=2.0, workdir=tmp_path)
    await callee.wait_event("ready")          # registered (or listening, without registrar)
    ...                                       # make the call arrive
    res = await callee.result(timeout=20)

Parameters (JSON keys): action "register" | "call" | "answer"; sip_port, rtp_port (allocated
when absent); transport "udp" | "tcp"; user, password, registrar ("host:port"), unregister
(bool, default true for register); uri (call target); play / record (WAV paths); hold (seconds
to stay connected, then hang up; null = wait for the remote BYE); dtmf (RFC 2833 digits sent
0.5 s after connect); answer_code (answer: 180 first, then this, default 200); answer_delay;
timeout (overall seconds); log_file / log_level (PJSIP log); lock_codec (default false: pjsua
would otherwise re-INVITE when an answer lists several codecs).

Result keys: ok, error, reg_status, reg_reason, connected, final_status, final_reason,
states (list of state names), connect_duration (s), record, record_seconds, dtmf_received,
remote_uri, call_id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

__all__ = [
    "INSTALL_HINT",
    "PjsuaProcess",
    "available",
    "call",
    "register",
    "run",
    "start",
    "start_answerer",
]

INSTALL_HINT = "pjsua2 not importable: pip install pjsua2-python"
_SCRIPT = Path(__file__).resolve()


def available() -> bool:
    """True when ``import pjsua2`` works in this interpreter."""
    import importlib.util

    return importlib.util.find_spec("pjsua2") is not None


# =========================================================================== child side


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _child(params: dict[str, Any]) -> dict[str, Any]:
    import pjsua2 as pj  # type: ignore[import-untyped]

    action = params["action"]
    transport = params.get("transport", "udp").lower()
    timeout = float(params.get("timeout", 20.0))
    registrar = params.get("registrar")
    user = params.get("user", "pjsua")
    password = params.get("password")
    result: dict[str, Any] = {
        "ok": False, "error": None, "reg_status": None, "reg_reason": None,
        "connected": False, "final_status": None, "final_reason": None, "states": [],
        "connect_duration": None, "record": params.get("record"), "record_seconds": None,
        "dtmf_received": "", "remote_uri": None, "call_id": None,
    }
    state: dict[str, Any] = {"reg_code": None, "reg_done": False, "call": None,
                             "confirmed_at": None, "disconnected": False, "incoming": None}

    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.uaConfig.userAgent = "pjsua2-harness"
    cfg.logConfig.level = int(params.get("log_level", 4))
    cfg.logConfig.consoleLevel = 0
    if params.get("log_file"):
        cfg.logConfig.filename = str(params["log_file"])
    cfg.medConfig.noVad = True
    cfg.medConfig.ecTailLen = 0
    ep.libInit(cfg)

    tcfg = pj.TransportConfig()
    tcfg.port = int(params["sip_port"])
    tcfg.boundAddress = "127.0.0.1"
    tcfg.publicAddress = "127.0.0.1"
    ep.transportCreate(pj.PJSIP_TRANSPORT_TCP if transport == "tcp" else pj.PJSIP_TRANSPORT_UDP,
                       tcfg)
    ep.libStart()
    ep.audDevManager().setNullDev()
    # G.711 only, PCMU first (what the switch relays); everything else disabled.
    for ci in ep.codecEnum2():
        ep.codecSetPriority(ci.codecId, 0)
    for codec, prio in (("PCMU/8000", 255), ("PCMA/8000", 254)):
        with contextlib.suppress(Exception):
            ep.codecSetPriority(codec, prio)

    player = None
    recorder = None
    if params.get("play"):
        player = pj.AudioMediaPlayer()
        player.createPlayer(str(params["play"]))
    if params.get("record"):
        recorder = pj.AudioMediaRecorder()
        recorder.createRecorder(str(params["record"]))

    suffix = ";transport=tcp" if transport == "tcp" else ""

    class Call(pj.Call):  # type: ignore[misc]
        def onCallState(self, prm: Any) -> None:
            ci = self.getInfo()
            name = ci.stateText
            result["states"].append(name)
            result["final_status"] = ci.lastStatusCode
            result["final_reason"] = ci.lastReason
            result["remote_uri"] = ci.remoteUri
            result["call_id"] = ci.callIdString
            _emit({"event": "call_state", "state": name, "status": ci.lastStatusCode,
                   "reason": ci.lastReason})
            if ci.state == pj.PJSIP_INV_STATE_CONFIRMED:
                result["connected"] = True
                state["confirmed_at"] = time.monotonic()
            elif ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
                state["disconnected"] = True
                if state["confirmed_at"] is not None:
                    result["connect_duration"] = time.monotonic() - state["confirmed_at"]

        def onCallMediaState(self, prm: Any) -> None:
            ci = self.getInfo()
            for i, mi in enumerate(ci.media):
                if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                    am = self.getAudioMedia(i)
                    if player is not None:
                        player.startTransmit(am)
                    if recorder is not None:
                        am.startTransmit(recorder)
                    del am
                    _emit({"event": "media_active"})

        def onDtmfDigit(self, prm: Any) -> None:
            result["dtmf_received"] += prm.digit
            _emit({"event": "dtmf", "digit": prm.digit})

    class Account(pj.Account):  # type: ignore[misc]
        def onRegState(self, prm: Any) -> None:
            state["reg_code"] = prm.code
            result["reg_status"] = prm.code
            result["reg_reason"] = prm.reason
            state["reg_done"] = True
            _emit({"event": "reg_state", "code": prm.code, "reason": prm.reason,
                   "expiration": prm.expiration})

        def onIncomingCall(self, prm: Any) -> None:
            state["call"] = Call(self, prm.callId)
            state["incoming"] = True
            _emit({"event": "incoming_call"})

    acfg = pj.AccountConfig()
    if registrar:
        acfg.idUri = f"sip:{user}@{registrar}"
        acfg.regConfig.registrarUri = f"sip:{registrar}{suffix}"
        acfg.regConfig.timeoutSec = int(params.get("expires", 300))
    else:
        acfg.idUri = f"sip:{user}@127.0.0.1:{params['sip_port']}"
        acfg.regConfig.registrarUri = ""
    if password is not None:
        acfg.sipConfig.authCreds.append(
            pj.AuthCredInfo("digest", "*", params.get("auth_user") or user, 0, password))
    # pjsua re-INVITEs to lock a single codec when an answer lists several; SIPp scenarios
    # (strict) would abort on that, so it is off unless asked for (lock_codec: true).
    acfg.mediaConfig.lockCodecEnabled = bool(params.get("lock_codec", False))
    acfg.mediaConfig.transportConfig.port = int(params["rtp_port"])
    acfg.mediaConfig.transportConfig.portRange = 10
    acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    acfg.mediaConfig.transportConfig.publicAddress = "127.0.0.1"
    acc = Account()
    acc.create(acfg)

    deadline = time.monotonic() + timeout

    def pump(until: Any, limit: float) -> bool:
        end = min(deadline, time.monotonic() + limit)
        while time.monotonic() < end:
            if until():
                return True
            ep.libHandleEvents(20)
        return bool(until())

    try:
        if registrar:
            if not pump(lambda: state["reg_done"], timeout):
                raise TimeoutError("no REGISTER response")
            if action == "register":
                result["ok"] = state["reg_code"] == 200
                if params.get("unregister", True) and state["reg_code"] == 200:
                    state["reg_done"] = False
                    acc.setRegistration(False)
                    pump(lambda: state["reg_done"], 5.0)
                    result["unreg_status"] = state["reg_code"]
                return result
            if state["reg_code"] != 200:
                raise RuntimeError(f"registration failed: {state['reg_code']}")
        _emit({"event": "ready", "sip_port": params["sip_port"]})

        # Calls are only referenced from ``state`` (no locals): every pjsua2 object must be
        # gone before libDestroy(), or its destructor asserts in the dead library.
        if action == "call":
            state["call"] = Call(acc)
            uri = params["uri"]
            if transport == "tcp" and "transport=" not in uri:
                uri += ";transport=tcp"
            state["call"].makeCall(uri, pj.CallOpParam(True))
        elif action == "answer":
            if not pump(lambda: state["incoming"] is not None, timeout):
                raise TimeoutError("no incoming call")
            ring = pj.CallOpParam()
            ring.statusCode = 180
            state["call"].answer(ring)
            pump(lambda: state["disconnected"], float(params.get("answer_delay", 0.3)))
            if not state["disconnected"]:
                ans = pj.CallOpParam()
                ans.statusCode = int(params.get("answer_code", 200))
                state["call"].answer(ans)
        else:
            raise ValueError(f"unknown action {action!r}")

        # wait for the call to be connected or to end
        pump(lambda: result["connected"] or state["disconnected"], timeout)
        if result["connected"] and not state["disconnected"]:
            if params.get("dtmf"):
                pump(lambda: state["disconnected"], 0.5)
                if not state["disconnected"]:
                    state["call"].dialDtmf(str(params["dtmf"]))
            hold = params.get("hold")
            if hold is None:
                pump(lambda: state["disconnected"], timeout)
            else:
                pump(lambda: state["disconnected"], float(hold))
                if not state["disconnected"]:
                    state["call"].hangup(pj.CallOpParam(True))
                    pump(lambda: state["disconnected"], 5.0)
        result["ok"] = bool(result["connected"] and state["disconnected"])
        return result
    except Exception as exc:  # reported to the parent, not raised
        result["error"] = f"{type(exc).__name__}: {exc}"
        return result
    finally:
        with contextlib.suppress(Exception):
            if state["call"] is not None and not state["disconnected"]:
                state["call"].hangup(pj.CallOpParam(True))
                pump(lambda: state["disconnected"], 2.0)
        # destroy calls and media before the account and the library (PEERS.md)
        state["call"] = None
        state["incoming"] = None
        recorder = None
        player = None
        with contextlib.suppress(Exception):
            acc.shutdown()
        del acc
        import gc

        gc.collect()
        with contextlib.suppress(Exception):
            ep.libDestroy()
        if result.get("record") and os.path.exists(str(result["record"])):
            result["record_seconds"] = _wav_seconds(str(result["record"]))


def _wav_seconds(path: str) -> float | None:
    import wave

    try:
        with wave.open(path, "rb") as w:
            return w.getnframes() / float(w.getframerate())
    except (OSError, EOFError, wave.Error):
        return None


def main(argv: list[str] | None = None) -> None:
    """Child entry point: one JSON argument, JSON lines out, then ``os._exit``."""
    argv = sys.argv[1:] if argv is None else argv
    params = json.loads(argv[0])
    try:
        result = _child(params)
    except Exception as exc:
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    _emit({"result": result})
    # pjsua2's SWIG objects can crash in interpreter teardown: leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# =========================================================================== parent side


def _prepare(params: dict[str, Any], workdir: str | Path | None) -> dict[str, Any]:
    import tempfile

    # imported lazily so the child never needs the package layout
    try:
        from .ports import free_port_range, free_udp_tcp_port
    except ImportError:  # running as a plain script
        sys.path.insert(0, str(_SCRIPT.parent))
        from ports import (  # type: ignore[import-not-found,no-redef]
            free_port_range,
            free_udp_tcp_port,
        )

    p = {k: (str(v) if isinstance(v, Path) else v) for k, v in params.items()}
    wd = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="pjsua-"))
    wd.mkdir(parents=True, exist_ok=True)
    p.setdefault("sip_port", free_udp_tcp_port())
    p.setdefault("rtp_port", free_port_range(20)[0])
    p.setdefault("log_file", str(wd / f"pjsua-{p['action']}-{p['sip_port']}.log"))
    return p


class PjsuaProcess:
    """A running pjsua2 child: progress events and the final result."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.events: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._result: dict[str, Any] | None = None
        self._stderr = b""
        self._event_added = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @property
    def sip_port(self) -> int:
        """The child's SIP port (to dial it directly: sip:user@127.0.0.1:port)."""
        return int(self.params["sip_port"])

    @property
    def log_file(self) -> str:
        """PJSIP's log file."""
        return str(self.params["log_file"])

    async def start(self) -> PjsuaProcess:
        """Launch ``python tests/peers/pjsua.py '<json>'``."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(_SCRIPT), json.dumps(self.params),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            if not line.startswith("{"):
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "result" in msg:
                self._result = msg["result"]
            else:
                self.events.append(msg)
            self._event_added.set()
        if self.proc.stderr is not None:
            self._stderr = await self.proc.stderr.read()

    async def wait_event(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        """Wait for a progress event (``ready``, ``reg_state``, ``incoming_call``,
        ``call_state``, ``media_active``, ``dtmf``)."""
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events:
                if ev.get("event") == name:
                    return ev
            if self._result is not None:
                raise AssertionError(f"pjsua finished without {name!r}: {self._result}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"pjsua: no {name!r} event in {timeout}s; got {self.events}")
            self._event_added.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event_added.wait(), min(remaining, 0.2))

    async def result(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for the child to finish; kill it (by PID) after ``timeout``.

        The dict gets ``events`` and ``log_file`` added; ``error`` says what went wrong.
        """
        assert self.proc is not None and self._reader is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
            await asyncio.wait_for(self.proc.wait(), 5.0)
        except TimeoutError:
            self.stop()
        res = dict(self._result) if self._result is not None else {
            "ok": False,
            "error": f"no result (exit {self.proc.returncode}): "
                     f"{self._stderr.decode(errors='replace')[-2000:]}",
        }
        res["events"] = list(self.events)
        res["log_file"] = self.log_file
        return res

    def stop(self) -> None:
        """SIGKILL the child by PID (it has no state worth a graceful stop)."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)


async def start(params: dict[str, Any], *, workdir: str | Path | None = None) -> PjsuaProcess:
    """Start a child with raw parameters (see the module docstring)."""
    return await PjsuaProcess(_prepare(params, workdir)).start()


async def run(params: dict[str, Any], *, workdir: str | Path | None = None,
              timeout: float = 30.0) -> dict[str, Any]:
    """Start a child and return its result."""
    proc = await start(params, workdir=workdir)
    return await proc.result(timeout + 5.0)


async def register(*, registrar: str, user: str, password: str, transport: str = "udp",
                   unregister: bool = True, expires: int = 300, timeout: float = 10.0,
                   workdir: str | Path | None = None, **extra: Any) -> dict[str, Any]:
    """REGISTER (with digest) and report ``reg_status`` (and ``unreg_status``)."""
    return await run(dict(action="register", registrar=registrar, user=user, password=password,
                          transport=transport, unregister=unregister, expires=expires,
                          timeout=timeout, **extra), workdir=workdir, timeout=timeout)


async def call(uri: str, *, registrar: str | None = None, user: str = "pjsua",
               password: str | None = None, transport: str = "udp",
               play: str | Path | None = None, record: str | Path | None = None,
               hold: float | None = 3.0, dtmf: str | None = None, timeout: float = 20.0,
               workdir: str | Path | None = None, **extra: Any) -> dict[str, Any]:
    """Call ``uri`` (registering first when ``registrar`` is given), play/record, hang up
    after ``hold`` seconds connected (None: wait for the remote BYE)."""
    return await run(dict(action="call", uri=uri, registrar=registrar, user=user,
                          password=password, transport=transport, play=play, record=record,
                          hold=hold, dtmf=dtmf, timeout=timeout, **extra),
                     workdir=workdir, timeout=timeout)


async def start_answerer(*, registrar: str | None = None, user: str = "pjsua",
                         password: str | None = None, transport: str = "udp",
                         play: str | Path | None = None, record: str | Path | None = None,
                         hold: float | None = None, answer_code: int = 200,
                         timeout: float = 30.0, workdir: str | Path | None = None,
                         **extra: Any) -> PjsuaProcess:
    """Start a child that (registers and) answers one incoming call; ``await
    proc.wait_event("ready")`` before calling it, then ``await proc.result()``."""
    return await start(dict(action="answer", registrar=registrar, user=user, password=password,
                            transport=transport, play=play, record=record, hold=hold,
                            answer_code=answer_code, timeout=timeout, **extra), workdir=workdir)


if __name__ == "__main__":
    main()
