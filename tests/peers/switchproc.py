"""Run the softswitch as a real process for interop tests.

:class:`SwitchProcess` writes a TOML config (the spec's Config section) with FREE ports into its
work directory, starts ``python -m switch run -c cfg.toml`` (cwd = the work directory, so the
default SQLite store lands there too; stdout+stderr -> ``switch.log``), waits until
``GET http://127.0.0.1:<http port>/healthz`` answers 200, and on exit sends SIGTERM by PID,
waits, then SIGKILL.

Usage::

    with SwitchProcess(tmp_path / "sw",
                       extensions=["1001", "1002"],            # passwords generated
                       trunks=[{"name": "pstn", "host": "127.0.0.1", "port": trunk_port,
                                "dids": {"+902121234567": "1001"}}],
                       routes=[{"pattern": "^\\\\+", "trunk": "pstn"}],
                       calls={"ring_timeout": 3},
                       auth={"algorithms": ["MD5"]}) as sw:   # SIPp answers MD5 only
        sw.sip_port, sw.http_port, sw.rtp_range, sw.registrar   # "127.0.0.1:<sip_port>"
        sw.password("1001"), sw.log_path, sw.config_path

or, in a test, the ``switch_factory`` fixture (import it into the test module)::

    from peers.switchproc import switch_factory  # noqa: F401  (pytest fixture)

    async def test_x(switch_factory):
        sw = switch_factory(extensions=["1001", "1002"])

Everything not covered by a keyword goes through ``extra`` (merged into the TOML document, e.g.
``extra={"registrar": {"min_expires": 10}}``). The switch rejects unknown keys, so a typo here
fails at start-up with the switch's own message in the raised error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from sip.digest import hash_a1

from .ports import free_port_range, free_udp_tcp_port

_REPO = Path(__file__).resolve().parents[2]

__all__ = ["SwitchProcess", "SwitchStartError", "dump_toml", "switch_factory"]


class SwitchStartError(RuntimeError):
    """The switch did not become healthy (the message carries its log tail)."""


# --------------------------------------------------------------------------- TOML writer


def _toml_key(key: str) -> str:
    if key and all(c.isalnum() or c in "-_" for c in key):
        return key
    return json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))      # JSON string escapes are valid TOML basic strings
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dump_toml(doc: Mapping[str, Any]) -> str:
    """Serialise a config dict: scalars first, then ``[tables]``, then ``[[arrays]]``.

    Tables are one level deep (as the switch config is); values inside a table that are dicts
    are written inline (``dids = { "+90..." = "1001" }``).
    """
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    arrays: list[tuple[str, Sequence[Mapping[str, Any]]]] = []
    for key, value in doc.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        elif isinstance(value, (list, tuple)) and value and all(
                isinstance(v, Mapping) for v in value):
            arrays.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, table in tables:
        lines.append(f"\n[{_toml_key(key)}]")
        lines += [f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in table.items()]
    for key, items in arrays:
        for item in items:
            lines.append(f"\n[[{_toml_key(key)}]]")
            lines += [f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


# --------------------------------------------------------------------------- the process


class SwitchProcess:
    """One switch process with its own config, ports and log (see the module docstring)."""

    def __init__(
        self,
        workdir: str | Path,
        *,
        extensions: Sequence[str | Mapping[str, Any]] = ("1001", "1002", "1003"),
        trunks: Sequence[Mapping[str, Any]] = (),
        routes: Sequence[Mapping[str, Any]] = (),
        calls: Mapping[str, Any] | None = None,
        auth: Mapping[str, Any] | None = None,
        registrar: Mapping[str, Any] | None = None,
        transports: Sequence[str] = ("udp", "tcp"),
        rtp_ports: int = 200,
        symmetric_latch: bool = False,
        log_level: str = "DEBUG",
        extra: Mapping[str, Mapping[str, Any]] | None = None,
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
        hashed_passwords: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.sip_port = free_udp_tcp_port()
        self.http_port = free_udp_tcp_port()
        self.rtp_range = free_port_range(rtp_ports)
        self.config_path = self.workdir / "switch.toml"
        self.log_path = self.workdir / "switch.log"
        self.log_level = log_level
        self.python = python
        self.env = dict(env or {})
        self.passwords: dict[str, str] = {}

        ext_tables: list[dict[str, Any]] = []
        for ext in extensions:
            if isinstance(ext, str):
                entry: dict[str, Any] = {"number": ext,
                                         "password": f"pw-{ext}-{secrets.token_hex(4)}"}
            else:
                entry = dict(ext)
                entry.setdefault("password", f"pw-{entry['number']}-{secrets.token_hex(4)}")
            self.passwords[str(entry["number"])] = str(entry["password"])
            ext_tables.append(entry)

        doc: dict[str, Any] = {
            "sip": {"address": "127.0.0.1", "port": self.sip_port,
                    "transports": list(transports)},
            "rtp": {"address": "127.0.0.1", "port_min": self.rtp_range[0],
                    "port_max": self.rtp_range[1], "symmetric_latch": symmetric_latch},
            "http": {"address": "127.0.0.1", "port": self.http_port, "enabled": True},
            "calls": {"ring_timeout": 30, "default_country": "TR", **(calls or {})},
        }
        if auth:
            doc["auth"] = dict(auth)
        if registrar:
            doc["registrar"] = dict(registrar)
        for section, values in (extra or {}).items():
            if isinstance(values, Mapping):
                doc[section] = {**doc.get(section, {}), **values}
            else:
                doc[section] = values
        if hashed_passwords:
            # Only H(number:realm:password) goes to the file ([[extensions]] ha1_md5/ha1_sha256).
            realm = str(doc["sip"].get("realm", "softswitch"))
            for entry in ext_tables:
                password, number = str(entry.pop("password")), str(entry["number"])
                entry["ha1_md5"] = hash_a1("MD5", number, realm, password)
                entry["ha1_sha256"] = hash_a1("SHA-256", number, realm, password)
        if ext_tables:
            doc["extensions"] = ext_tables
        if trunks:
            doc["trunks"] = [dict(t) for t in trunks]
        if routes:
            doc["routes"] = [dict(r) for r in routes]
        self.document = doc
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    # ------------------------------------------------------------------ info

    @property
    def registrar(self) -> str:
        """``"127.0.0.1:<sip_port>"`` (for baresip/pjsua ``registrar=``)."""
        return f"127.0.0.1:{self.sip_port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<http_port>``."""
        return f"http://127.0.0.1:{self.http_port}"

    def password(self, number: str) -> str:
        """The digest password of an extension."""
        return self.passwords[number]

    def uri(self, user: str, transport: str | None = None) -> str:
        """``sip:<user>@127.0.0.1:<sip_port>[;transport=tcp]``."""
        suffix = f";transport={transport}" if transport and transport != "udp" else ""
        return f"sip:{user}@127.0.0.1:{self.sip_port}{suffix}"

    def log(self) -> str:
        """The switch's output so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_problems(self) -> list[str]:
        """Log lines that look like crashes: tracebacks and ERROR/CRITICAL records."""
        return [line for line in self.log().splitlines()
                if "Traceback" in line or " ERROR " in line or "CRITICAL" in line]

    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    # ------------------------------------------------------------------ lifecycle

    def write_config(self) -> Path:
        """Write ``switch.toml`` (done by :meth:`start`; exposed for check-config tests)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(dump_toml(self.document))
        return self.config_path

    def _launch(self) -> None:
        self.write_config()
        self._log_file = self.log_path.open("wb")
        # The switch under test is this checkout's, whatever an editable install points at.
        path = os.pathsep.join(p for p in (str(_REPO), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **self.env}
        self.proc = subprocess.Popen(
            [self.python, "-m", "switch", "run", "-c", str(self.config_path),
             "--log-level", self.log_level],
            cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=self._log_file,
            stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )

    def _probe(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=0.5) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _fail(self, why: str) -> SwitchStartError:
        tail = self.log()[-6000:]
        self.stop()
        return SwitchStartError(f"switch {why}\nconfig {self.config_path}:\n"
                                f"{self.config_path.read_text()}\n--- log tail:\n{tail}")

    def start(self, timeout: float = 15.0) -> SwitchProcess:
        """Start and block until /healthz is 200 (SwitchStartError with the log otherwise)."""
        self._launch()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self._fail(f"exited with {self.proc.returncode} during start-up")
            if self._probe():
                return self
            time.sleep(0.1)
        raise self._fail(f"not healthy after {timeout}s")

    async def astart(self, timeout: float = 15.0) -> SwitchProcess:
        """:meth:`start` without blocking the event loop."""
        self._launch()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self._fail(f"exited with {self.proc.returncode} during start-up")
            if await asyncio.to_thread(self._probe):
                return self
            await asyncio.sleep(0.1)
        raise self._fail(f"not healthy after {timeout}s")

    def healthz(self) -> dict[str, Any]:
        """GET /healthz as JSON (raises on HTTP errors)."""
        with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=2.0) as resp:
            data: dict[str, Any] = json.loads(resp.read() or b"{}")
            return data

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM by PID, wait ``timeout`` s, then SIGKILL; returns the exit code."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return proc.returncode if proc is not None else None

    def __enter__(self) -> SwitchProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> SwitchProcess:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)


@pytest.fixture
def switch_factory(tmp_path: Path) -> Iterator[Callable[..., SwitchProcess]]:
    """Fixture: ``switch_factory(**SwitchProcess kwargs)`` starts a healthy switch; all are
    stopped (SIGTERM, then SIGKILL) at teardown."""
    started: list[SwitchProcess] = []

    def make(**kwargs: Any) -> SwitchProcess:
        sp = SwitchProcess(tmp_path / f"switch{len(started)}", **kwargs)
        started.append(sp)
        return sp.start()

    yield make
    for sp in started:
        sp.stop()
