"""Tests for the command line: ``python -m switch check-config`` / ``run`` argument handling."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from switch.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "configs" / "example.toml"


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "switch", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_example_ok() -> None:
    result = run_cli("check-config", "-c", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK"
    assert result.stderr == ""


def test_check_config_bundled_default_ok(tmp_path: Path) -> None:
    # Without -c the bundled default is checked, independent of the working directory.
    result = run_cli("check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK"


def test_check_config_validation_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[trunks]]\nname = "pstn"\nhost = "127.0.0.1"\nport = 0\n')
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == "config: trunks[0].port: must be 1..65535"


def test_check_config_unknown_key(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text("[sip]\nprot = 5060\n")
    result = run_cli("check-config", "-c", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == "config: sip.prot: unknown key (did you mean 'port'?)"


def test_check_config_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "syntax.toml"
    path.write_text("[sip\n")
    result = run_cli("check-config", "-c", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"config: {path}: invalid TOML:")


def test_check_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    result = run_cli("check-config", "-c", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"config: {path}: file not found"


def test_run_with_bad_config_exits_2_before_starting(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[calls]\ndefault_country = "XX"\n')
    result = run_cli("run", "-c", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith("config: calls.default_country: unknown region 'XX'")


def test_no_command_is_a_usage_error() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "usage: softswitch" in result.stderr


def test_main_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "-c", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out == "OK\n"
    bad = tmp_path / "bad.toml"
    bad.write_text("[rtp]\nport_min = 20001\n")
    assert main(["check-config", "-c", str(bad)]) == 2
    assert capsys.readouterr().err == "config: rtp.port_min: must be even (RTP even, RTCP odd)\n"


def test_run_arguments() -> None:
    args = build_parser().parse_args(["run", "-c", "x.toml", "--log-level", "debug"])
    assert (args.command, args.config, args.log_level) == ("run", "x.toml", "DEBUG")
    args = build_parser().parse_args(["run"])
    assert (args.config, args.log_level) == (None, None)
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["run", "--log-level", "TRACE"])
    assert info.value.code == 2


def test_run_invokes_run_switch_with_overridden_log_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``run`` hands the loaded config (with --log-level applied) to switch.app.run_switch."""
    import types

    from switch.config import Config

    seen: list[Config] = []

    async def fake_run_switch(config: Config) -> None:
        seen.append(config)

    fake_app = types.ModuleType("switch.app")
    fake_app.run_switch = fake_run_switch  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "switch.app", fake_app)
    assert main(["run", "-c", str(EXAMPLE), "--log-level", "warning"]) == 0
    assert len(seen) == 1
    assert seen[0].log.level == "WARNING"
    assert [e.number for e in seen[0].extensions] == ["1001", "1002", "1003"]


def test_run_raises_the_open_file_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run`` lifts the soft open-file limit to the hard one before the switch starts (four
    sockets per anchored call: a soft limit of 1024 would stop it near 250 calls)."""
    import types

    from switch.config import Config

    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 512:
        pytest.skip(f"needs a finite hard open-file limit above 512 (have {hard})")
    seen: list[tuple[int, int]] = []

    async def fake_run_switch(config: Config) -> None:
        seen.append(resource.getrlimit(resource.RLIMIT_NOFILE))

    fake_app = types.ModuleType("switch.app")
    fake_app.run_switch = fake_run_switch  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "switch.app", fake_app)
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    try:
        assert main(["run", "-c", str(EXAMPLE)]) == 0
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert seen == [(hard, hard)]


def test_run_reports_os_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from switch.config import Config

    async def failing_run_switch(config: Config) -> None:
        raise OSError(98, "Address already in use")

    fake_app = types.ModuleType("switch.app")
    fake_app.run_switch = failing_run_switch  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "switch.app", fake_app)
    assert main(["run", "-c", str(EXAMPLE)]) == 1


def test_hash_password_prints_lines_the_config_accepts(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "switch", "hash-password", "1003", "--realm", "lab.example"],
        cwd=ROOT, input="s3cret\n", capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    lines = [ln for ln in result.stdout.splitlines() if not ln.startswith("#")]
    md5 = hashlib.md5(b"1003:lab.example:s3cret").hexdigest()
    sha = hashlib.sha256(b"1003:lab.example:s3cret").hexdigest()
    assert lines == [f'ha1_md5 = "{md5}"', f'ha1_sha256 = "{sha}"']
    config = tmp_path / "ha1.toml"
    config.write_text('[sip]\nrealm = "lab.example"\n[[extensions]]\nnumber = "1003"\n'
                      + "\n".join(lines) + "\n")
    checked = run_cli("check-config", "-c", str(config))
    assert checked.returncode == 0, checked.stderr
    # The realm comes from the config file when --realm is not given.
    from_file = subprocess.run(
        [sys.executable, "-m", "switch", "hash-password", "1003", "-c", str(config)],
        cwd=ROOT, input="s3cret\n", capture_output=True, text=True, timeout=60, check=False)
    assert f'ha1_md5 = "{md5}"' in from_file.stdout, from_file.stderr
    empty = subprocess.run([sys.executable, "-m", "switch", "hash-password", "1003"], cwd=ROOT,
                           input="\n", capture_output=True, text=True, timeout=60, check=False)
    assert empty.returncode == 1 and "must not be empty" in empty.stderr
