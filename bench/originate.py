"""HTTP originate latency: request sent -> first INVITE at the trunk, under load.

    python -m bench.originate                 # 500 calls up, then 100 requests/s for 10 s
    python -m bench.originate --quick         # 50 calls up, 20 requests/s for 3 s (smoke)

The switch runs as its own process (``python -m switch run``) with the native HTTP API and a
trunk to a SIPp UAS that answers every INVITE and holds the call until the switch hangs up.
A load process (``bench/originate.py --client``, httpx) first brings ``--calls-up`` calls up
through ``POST /v1/calls``, then sends ``--rate`` requests per second for ``--seconds``, each
with a unique caller ID. The UAS's message trace (``-trace_msg``, microsecond timestamps) gives
the moment each INVITE arrived; its From user names the request. Latency = INVITE arrival -
request sent (same machine, same clock). Printed: p50/p90/p99/max of that latency and of the
HTTP response time, failures, and the target (p99 under 20 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import Proc, free_ports, percentile, sip_ping, sipp_binary, wait_http_ok

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
API_KEY = "bench-originate-key"
NUMBER = "+905321234567"


def _config(sip_port: int, http_port: int, uas_port: int, rtp: tuple[int, int],
            db: Path) -> str:
    return "\n".join([
        "[sip]", f'address = "{HOST}"', f"port = {sip_port}", 'transports = ["udp"]',
        "[rtp]", f'address = "{HOST}"', f"port_min = {rtp[0]}", f"port_max = {rtp[1]}",
        "[http]", f'address = "{HOST}"', f"port = {http_port}",
        "[calls]", "ring_timeout = 3600",
        "[store]", f'url = "sqlite:///{db}"',
        "[log]", 'level = "WARNING"',
        "[api]", f'keys = [{{ key = "{API_KEY}", tenant = "default" }}]',
        "[[trunks]]", 'name = "uas"', f'host = "{HOST}"', f"port = {uas_port}",
        "[[routes]]", 'pattern = "^\\\\+"', 'trunk = "uas"', "",
    ])


# ---------------------------------------------------------------------------- load client


async def _client(url: str, calls_up: int, rate: float, seconds: float, out: Path) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {API_KEY}"}
    records: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits,
                                 timeout=30.0) as client:

        async def one(tag: str, phase: str) -> None:
            sent = time.time()
            try:
                r = await client.post("/v1/calls", json={"destination": NUMBER,
                                                        "caller_id": tag})
                status = r.status_code
            except httpx.HTTPError as exc:
                status = -1
                print(f"request failed: {exc!r}", file=sys.stderr)
            records.append({"tag": tag, "phase": phase, "sent": sent,
                            "answered": time.time(), "status": status})

        # Warm-up: bring the calls up (paced so the UAS is not flooded).
        tasks = []
        for i in range(calls_up):
            tasks.append(asyncio.create_task(one(f"+1999{i:07d}", "setup")))
            await asyncio.sleep(1.0 / 200)
        await asyncio.gather(*tasks)
        await asyncio.sleep(2.0)
        # Measured phase: a steady rate, bounded in count and time.
        tasks = []
        total = round(rate * seconds)
        start = time.monotonic()
        for i in range(total):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(f"+1888{i:07d}", "measure")))
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    out.write_text(json.dumps(records))


# ---------------------------------------------------------------------------- analysis

_STAMP = re.compile(r"^-+ (\d{4}-\d{2}-\d{2})\s+(\d{2}:\d{2}:\d{2}\.\d+)")


def invite_times(trace: Path) -> dict[str, float]:
    """From user -> arrival time (unix seconds) of each INVITE in a SIPp message trace."""
    times: dict[str, float] = {}
    stamp: float | None = None
    kind: str | None = None
    for line in trace.read_text(errors="replace").splitlines():
        m = _STAMP.match(line)
        if m:
            stamp = dt.datetime.fromisoformat(f"{m.group(1)} {m.group(2)}").timestamp()
            kind = None
            continue
        if kind is None and (line.startswith("SIP/2.0 ") or re.match(r"^[A-Z]+ sip:", line)):
            kind = line.split(" ", 1)[0]
            continue
        if kind == "INVITE" and stamp is not None and line.lower().startswith("from:"):
            user = re.search(r"sip:([^@;>]+)@", line)
            if user:
                times.setdefault(user.group(1), stamp)
            kind = "done"
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls-up", type=int, default=500)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rtp-range", default="40000-47999")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--client", nargs=5, metavar=("URL", "UP", "RATE", "SECONDS", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        url, up, rate, seconds, out = args.client
        asyncio.run(_client(url, int(up), float(rate), float(seconds), Path(out)))
        return 0
    if args.quick:
        args.calls_up, args.rate, args.seconds = 50, 20.0, 3.0
    if args.calls_up < 0 or not 0 < args.rate <= 1000 or not 0 < args.seconds <= 120:
        parser.error("need calls-up >= 0, 0 < rate <= 1000, 0 < seconds <= 120")
    sipp = sipp_binary()
    if sipp is None:
        print("SIPp not found: apt-get install sip-tester", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = args.out or REPO / "bench" / "results" / f"originate-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    sip_port, http_port, uas_port = free_ports(1), free_ports(1), free_ports(1)
    lo, hi = (int(x) for x in args.rtp_range.split("-", 1))
    cfg = workdir / "softswitch.toml"
    cfg.write_text(_config(sip_port, http_port, uas_port, (lo, hi), workdir / "s.db"))
    total = args.calls_up + round(args.rate * args.seconds)
    uas = Proc([sipp, "-sf", str(REPO / "bench" / "scenarios" / "uas.xml"), "-i", HOST,
                "-p", str(uas_port), "-mp", str(free_ports(4)), "-m", str(total),
                "-trace_msg", "-message_file", str(workdir / "uas_msg.log"),
                "-nostdin", "-buff_size", "4194304"],
               log=workdir / "uas.log", cwd=workdir)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                       os.environ.get("PYTHONPATH")]))}
    switch = Proc([sys.executable, "-m", "switch", "run", "-c", str(cfg)],
                  log=workdir / "softswitch.log", cwd=workdir, env=env)
    try:
        if not wait_http_ok(f"http://{HOST}:{http_port}/healthz", 30) or \
                not sip_ping(sip_port, 5.0):
            print("switch did not start:\n" + switch.tail(), file=sys.stderr)
            return 1
        records_path = workdir / "client.json"
        client = Proc([sys.executable, "-m", "bench.originate", "--client",
                       f"http://{HOST}:{http_port}", str(args.calls_up), str(args.rate),
                       str(args.seconds), str(records_path)],
                      log=workdir / "client.log", cwd=REPO, env=env)
        deadline = time.monotonic() + 60 + args.calls_up / 100 + args.seconds * 2
        while client.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        client.stop()
        time.sleep(1.0)
        if not records_path.exists():
            print("load client failed:\n" + client.tail(), file=sys.stderr)
            return 1
        records = json.loads(records_path.read_text())
    finally:
        switch.stop(grace=10)
        uas.stop()
    arrivals = invite_times(workdir / "uas_msg.log")
    measured = [r for r in records if r["phase"] == "measure"]
    lat = [(arrivals[r["tag"]] - r["sent"]) * 1000 for r in measured if r["tag"] in arrivals]
    http = [(r["answered"] - r["sent"]) * 1000 for r in measured]
    failed = [r for r in measured if r["status"] != 202]
    missing = [r for r in measured if r["tag"] not in arrivals]
    setup_ok = sum(1 for r in records if r["phase"] == "setup" and r["status"] == 202)

    def fmt(values: list[float]) -> str:
        if not values:
            return "n/a"
        return " ".join(f"{name} {percentile(values, p):.1f}" for name, p in
                        (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))) + " ms"

    result = {
        "calls_up": args.calls_up, "calls_up_accepted": setup_ok, "rate": args.rate,
        "seconds": args.seconds, "requests": len(measured), "failed": len(failed),
        "no_invite": len(missing),
        "request_to_invite_ms": {p: percentile(lat, p) for p in (50, 90, 99, 100)} if lat
        else None,
        "http_response_ms": {p: percentile(http, p) for p in (50, 90, 99, 100)} if http
        else None,
        "workdir": str(workdir),
    }
    (workdir / "results.json").write_text(json.dumps(result, indent=2))
    print(f"originate latency, {args.calls_up} calls up ({setup_ok} accepted), "
          f"{args.rate:g} requests/s for {args.seconds:g} s:")
    print(f"  request -> first INVITE at the trunk: {fmt(lat)}  (target p99 < 20 ms)")
    print(f"  HTTP response time:                   {fmt(http)}")
    print(f"  requests {len(measured)}, not 202: {len(failed)}, no INVITE seen: "
          f"{len(missing)}")
    print(f"  results in {workdir}")
    return 0 if not failed and not missing else 1


if __name__ == "__main__":
    raise SystemExit(main())
