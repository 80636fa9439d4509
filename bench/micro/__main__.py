"""Run the micro-benchmarks, print a table and keep the figures.

    python -m bench.micro                 # every benchmark, pytest-benchmark defaults (~30 s)
    python -m bench.micro --quick         # a few rounds each: checks the harness, not speed
    python -m bench.micro -k "sip or rtp" # a subset (pytest -k expression)

Runs ``python -m pytest bench/micro --benchmark-only`` in a child process with
``--benchmark-json``, then prints one line per benchmark: median µs per call, calls per second
(1 / median), the per-item cost where a call does several units of work (samples, channel
frames), min, rounds. Writes ``bench/results/micro-<YYYYmmdd-HHMMSS>/`` (``--out`` to put it
elsewhere) holding ``results.json`` (host, parameters and the summary rows) and
``pytest-benchmark.json`` (every raw statistic). The median is reported rather than the mean
because these machines are shared: the mean carries the scheduler's outliers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SUITE = Path(__file__).resolve().parent


def _row(bench: dict[str, Any]) -> dict[str, Any]:
    stats = bench["stats"]
    extra = bench.get("extra_info") or {}
    items = int(extra.get("items", 1)) or 1
    median = float(stats["median"])
    return {
        "name": bench["name"],
        "group": bench.get("group") or "",
        "median_us": median * 1e6,
        "min_us": float(stats["min"]) * 1e6,
        "mean_us": float(stats["mean"]) * 1e6,
        "stddev_us": float(stats["stddev"]) * 1e6,
        "ops_per_s": 1.0 / median if median > 0 else None,
        "rounds": int(stats["rounds"]),
        "items": items,
        "unit": str(extra.get("unit", "call")),
        "ns_per_item": median * 1e9 / items,
    }


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The console table: one line per benchmark, grouped."""
    header = (
        f"{'benchmark':<40} {'µs/op':>10} {'ops/s':>12} {'per item':>22} "
        f"{'min µs':>10} {'rounds':>8}"
    )
    lines = [header, "-" * len(header)]
    group = None
    for row in sorted(rows, key=lambda r: (r["group"], r["name"])):
        if row["group"] != group:
            group = row["group"]
            lines.append(f"[{group}]")
        per_item = ""
        if row["items"] > 1:
            per_item = f"{_fmt(row['ns_per_item'])} ns/{row['unit']}"
        ops = row["ops_per_s"]
        lines.append(
            f"  {row['name'].removeprefix('test_'):<38} {_fmt(row['median_us']):>10} "
            f"{(f'{ops:,.0f}' if ops else '-'):>12} {per_item:>22} "
            f"{_fmt(row['min_us']):>10} {row['rounds']:>8}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.micro``; returns the exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true",
                        help="a few rounds per benchmark (smoke check of the harness)")
    parser.add_argument("-k", dest="keyword", default=None,
                        help="pytest -k expression selecting benchmarks")
    parser.add_argument("--max-time", type=float, default=None,
                        help="seconds per benchmark (pytest-benchmark's --benchmark-max-time)")
    parser.add_argument("--out", type=Path, default=None,
                        help="result folder (default bench/results/micro-<stamp>)")
    args = parser.parse_args(argv)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out: Path = args.out or REPO / "bench" / "results" / f"micro-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "pytest-benchmark.json"
    cmd = [
        sys.executable, "-m", "pytest", str(SUITE), "--benchmark-only", "-q",
        "-p", "no:cacheprovider", f"--benchmark-json={raw}", "--benchmark-disable-gc",
    ]
    if args.quick:
        cmd += ["--benchmark-max-time=0.01", "--benchmark-min-rounds=3",
                "--benchmark-warmup=off"]
    elif args.max_time is not None:
        cmd.append(f"--benchmark-max-time={args.max_time}")
    if args.keyword:
        cmd += ["-k", args.keyword]
    print("running:", " ".join(cmd[1:]), flush=True)
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if proc.returncode != 0 or not raw.exists():
        sys.stdout.write(proc.stdout[-5000:])
        sys.stderr.write(proc.stderr[-5000:])
        print(f"benchmark run failed (pytest exit status {proc.returncode})", file=sys.stderr)
        return 1

    data = json.loads(raw.read_text())
    rows = [_row(b) for b in data.get("benchmarks", [])]
    print(format_table(rows))
    result = {
        "stamp": stamp,
        "host": {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "loadavg_1m": os.getloadavg()[0],
            "cpu": (data.get("machine_info") or {}).get("cpu", {}).get("brand_raw"),
        },
        "parameters": {"quick": args.quick, "keyword": args.keyword, "max_time": args.max_time},
        "wall_seconds": round(wall, 1),
        "benchmarks": rows,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(f"\n{len(rows)} benchmarks in {wall:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
