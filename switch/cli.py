"""Command line interface: ``softswitch run``, ``check-config`` and ``hash-password``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import json
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from sip.digest import hash_a1
from switch.config import (
    LOG_LEVELS,
    Config,
    ConfigError,
    LogConfig,
    default_config,
    load_config,
)

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130

logger = logging.getLogger("switch")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="softswitch", description="Embeddable SIP softswitch (registrar, B2BUA, RTP relay)."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    config_help = "TOML configuration file (default: the bundled loopback-only default)"

    run = sub.add_parser("run", help="run the softswitch until SIGINT/SIGTERM")
    run.add_argument("-c", "--config", metavar="FILE", help=config_help)
    run.add_argument(
        "--log-level",
        metavar="LEVEL",
        type=str.upper,
        choices=LOG_LEVELS,
        help=f"override [log] level ({', '.join(LOG_LEVELS)})",
    )
    run.set_defaults(handler=_cmd_run)

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("-c", "--config", metavar="FILE", help=config_help)
    check.set_defaults(handler=_cmd_check_config)

    hashpw = sub.add_parser(
        "hash-password",
        help="print an extension's ha1_md5/ha1_sha256 lines (the password stays out of the file)",
    )
    hashpw.add_argument("number", help="the extension number (the digest user name)")
    hashpw.add_argument("-c", "--config", metavar="FILE", help="take [sip] realm from this file")
    hashpw.add_argument("--realm", help="the digest realm (default: [sip] realm)")
    hashpw.set_defaults(handler=_cmd_hash_password)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status (2 for configuration errors)."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


def _load(path: str | None) -> Config:
    return default_config() if path is None else load_config(path)


def _cmd_check_config(args: argparse.Namespace) -> int:
    try:
        _load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    print("OK")
    return EXIT_OK


def _cmd_hash_password(args: argparse.Namespace) -> int:
    """Read the password from the terminal (or one line of stdin) and print TOML lines."""
    realm = args.realm
    if realm is None:
        try:
            realm = _load(args.config).sip.realm
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return EXIT_CONFIG
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.number}@{realm}: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("the password must not be empty", file=sys.stderr)
        return EXIT_FAILURE
    print(f"# [[extensions]] number = {json.dumps(args.number)}, realm {json.dumps(realm)}")
    print(f'ha1_md5 = "{hash_a1("MD5", args.number, realm, password)}"')
    print(f'ha1_sha256 = "{hash_a1("SHA-256", args.number, realm, password)}"')
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        config = _load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    if args.log_level:
        config = dataclasses.replace(config, log=LogConfig(level=args.log_level))
    level = config.log.level
    logging.basicConfig(
        level=getattr(logging, level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    raise_open_file_limit()
    # Imported here so the CLI (and check-config) work without loading the whole switch.
    from switch.app import run_switch  # type: ignore[import-not-found,unused-ignore]

    try:
        _run_async(run_switch(config))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OSError as exc:  # e.g. a listen port already in use
        logger.error("cannot start: %s", exc)
        return EXIT_FAILURE
    return EXIT_OK


def raise_open_file_limit() -> int | None:
    """Raise this process's soft open-file limit to its hard limit; return the new soft limit
    (None when it is unlimited or the platform has none).

    Every anchored call holds four sockets (RTP and RTCP for each leg): the common default
    soft limit of 1024 would stop the switch near 250 calls while the hard limit, which an
    unprivileged process may raise itself to, is usually far higher (servers such as nginx
    and FreeSWITCH do the same at start)."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # e.g. an unlimited hard limit above nr_open
            logger.warning("cannot raise the open-file limit from %d: %s", soft, exc)
    if soft != resource.RLIM_INFINITY:
        logger.info("open-file limit %d: room for about %d anchored calls", soft, soft // 4)
    return None if soft == resource.RLIM_INFINITY else soft


def _run_async(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to completion on uvloop when available (Linux/macOS), else asyncio."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if sys.platform != "win32":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(coro)
