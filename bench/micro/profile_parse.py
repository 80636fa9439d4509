"""Where :func:`sip.parser.parse_message` spends its time, by cProfile.

    python -m bench.micro.profile_parse            # 20000 rounds of INVITE, 200, ACK, BYE
    python -m bench.micro.profile_parse -n 2000 --top 30

Parses the typical call-leg messages of :mod:`bench.micro.samples` in turn and prints the
functions sorted by own time (tottime) and by cumulative time, each with its share of the
total. cProfile adds a fixed cost to every Python-level call, so shares of many-small-call
functions are overstated; the untimed per-message figures printed first (plain
``time.perf_counter`` loop) are the ones to compare before/after a change.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time

from bench.micro.samples import SIP_MESSAGES
from sip.parser import parse_message


def _plain_timing(rounds: int) -> dict[str, float]:
    """Median-of-5 µs per parse of each message, without the profiler."""
    result = {}
    for name, data in SIP_MESSAGES.items():
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(rounds):
                parse_message(data)
            runs.append((time.perf_counter() - start) / rounds * 1e6)
        result[name] = sorted(runs)[2]
    return result


def _print_table(stats: pstats.Stats, key: str, top: int) -> None:
    entries = stats.stats  # type: ignore[attr-defined]
    total = stats.total_tt  # type: ignore[attr-defined]
    index = 2 if key == "tottime" else 3
    rows = sorted(entries.items(), key=lambda item: item[1][index], reverse=True)[:top]
    print(f"\n-- by {key} (share of {total:.2f} s profiled) --")
    print(f"{'share':>6} {'tottime':>8} {'cumtime':>8} {'calls':>9}  function")
    for (filename, line, func), (_cc, ncalls, tt, ct, _callers) in rows:
        where = filename.split("/work/main/")[-1] if "/" in filename else filename
        share = (tt if key == "tottime" else ct) / total * 100
        print(f"{share:5.1f}% {tt:8.3f} {ct:8.3f} {ncalls:>9}  {func} ({where}:{line})")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--rounds", type=int, default=20000,
                        help="parses of each message under the profiler")
    parser.add_argument("--top", type=int, default=25, help="functions listed per table")
    args = parser.parse_args(argv)

    plain = _plain_timing(max(1, args.rounds // 4))
    print("µs per parse_message (no profiler, median of 5):")
    for name, us in plain.items():
        print(f"  {name:<7} {len(SIP_MESSAGES[name]):>4} bytes  {us:7.2f} µs")
    print(f"  mean    {sum(plain.values()) / len(plain):7.2f} µs")

    messages = list(SIP_MESSAGES.values())
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.rounds):
        for data in messages:
            parse_message(data)
    profiler.disable()
    stats = pstats.Stats(profiler)
    _print_table(stats, "tottime", args.top)
    _print_table(stats, "cumtime", args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
