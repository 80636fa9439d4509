"""Concurrent-calls benchmark: hold N established calls through the switch, measure memory.

    python -m bench.concurrent [--calls 10000] [--rate 150] [--quick] [--out bench/results]

A SIPp UAC places ``--calls`` calls at ``--rate`` calls/s through our switch (media anchored:
every call opens two RTP/RTCP port pairs, 4 UDP sockets; no RTP is sent) to a SIPp UAS that
answers at once. Each call is held until every call is up plus ``--hold`` seconds, then the
UAC hangs them up in the order (and at the rate) they were placed. While the calls ramp up the
benchmark samples, once a second, the switch process's ``VmRSS`` (``/proc/<pid>/status``; the
kernel's figure, no tracemalloc or other instrumentation in the switch), its open file
descriptors, and the number of established calls (the UAC's 200 OK count from its SIPp
statistics). Reported: the highest N reached with every placed call established and none
failed, memory per call ((RSS at N - RSS idle) / N, and the slope of RSS over calls), and
the RSS after every call has hung up. Targets (issue 10): under 50 kB per bridged call and at
least 10,000 established calls. See bench/README.md.

Exit status: 0 when all N calls were established (and hung up); 1 when not or the harness
failed; 3 when SIPp or the switch's dependencies are missing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    HOST,
    REPO,
    SCENARIOS,
    Proc,
    SippCommand,
    SippCounters,
    free_ports,
    loadavg,
    read_stat_csv,
    sipp_binary,
    stat_int,
    write_csv,
)
from bench.cps import CALLER, DIALLED, Ports, Softswitch
from media.engine import PARK_IDLE

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNAVAILABLE = 3

TARGET_CALLS = 10_000
TARGET_KB_PER_CALL = 50.0
SOCKETS_PER_CALL = 4  # two legs x (RTP + RTCP)
FD_MARGIN = 1024  # the switch's own files, SIP/HTTP sockets, the store
SAMPLE_COLUMNS = ("t_s", "placed", "established", "failed", "rss_kb", "fds", "loadavg")


# --------------------------------------------------------------------------- measurements


def proc_status_kb(pid: int) -> dict[str, int]:
    """The ``kB`` fields of ``/proc/<pid>/status`` (VmRSS, VmHWM, RssAnon, ...); {} if gone."""
    out: dict[str, int] = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            out[key] = int(parts[0])
    return out


def open_fds(pid: int) -> int:
    """How many file descriptors process ``pid`` has open (-1 if it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def established_calls(stat_file: Path) -> tuple[int, int, int]:
    """(created, established, failed) calls from the UAC's SIPp ``-trace_stat`` CSV.

    Established = the cumulative count of the 200 OK the scenario marks ``rtd="true"``: the
    ``ResponseTimeRepartition1_*`` buckets summed (every answered INVITE lands in one).
    """
    rows = read_stat_csv(stat_file)
    if not rows:
        return 0, 0, 0
    last = rows[-1]
    answered = sum(stat_int(last, k) for k in last if k.startswith("ResponseTimeRepartition1_"))
    return stat_int(last, "TotalCallCreated"), answered, stat_int(last, "FailedCall(C)")


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ``ys`` over ``xs`` (None with fewer than 2 distinct x)."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def raise_fd_limit(need: int) -> tuple[int, str | None]:
    """Raise this process's RLIMIT_NOFILE to ``need`` (children inherit it).

    Returns the soft limit now in force and a warning when ``need`` could not be granted
    (raising the hard limit needs root/CAP_SYS_RESOURCE; otherwise run ``ulimit -n``).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return soft, None
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
        return need, None
    if hard != resource.RLIM_INFINITY and hard < need:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard, (
            f"the open-file limit is {hard} and could not be raised to {need}; "
            f"run `ulimit -n {need}` (as root, or raise the hard limit) first"
        )
    return soft, f"could not raise the open-file limit to {need}"


# --------------------------------------------------------------------------- the run


def run(args: argparse.Namespace, sipp: str, run_dir: Path) -> dict[str, Any]:
    """Start the switch and the SIPp pair, ramp to ``args.calls``, hold, hang up, measure."""
    n = args.calls
    lo, hi = (int(x) for x in args.rtp_range.split("-", 1))
    capacity = (hi - lo + 1) // 4  # two even/odd pairs per call
    if capacity < n:
        raise SystemExit(f"--rtp-range {args.rtp_range} holds {capacity} calls, fewer than {n}")
    need_fds = SOCKETS_PER_CALL * n + FD_MARGIN
    fd_limit, fd_warning = raise_fd_limit(need_fds)
    if fd_warning:
        print(f"warning: {fd_warning}", file=sys.stderr, flush=True)

    switch_dir = run_dir / "softswitch"
    switch_dir.mkdir(parents=True, exist_ok=True)
    ports = Ports(
        uac=free_ports(1),
        uac_media=free_ports(4),
        uac_control=free_ports(1),
        uas=free_ports(1),
        uas_media=free_ports(4),
        uas_control=free_ports(1),
    )
    switch = Softswitch(switch_dir, args)
    ramp_s = n / args.rate
    hold_ms = int((ramp_s + args.settle + args.hold) * 1000)
    budget = ramp_s + args.settle + args.hold + 60.0  # bound on the ramp-up and hold phase
    samples: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "calls": n,
        "rate": args.rate,
        "fd_limit": fd_limit,
        "fds_needed": need_fds,
        "rtp_range": args.rtp_range,
        "rtp_address": args.rtp_address,
    }
    uas: Proc | None = None
    uac: Proc | None = None
    first_failure: str | None = None
    best_clean = 0  # highest established count while no call had failed
    rss_at_best: int | None = None
    try:
        switch.start(ports)
        pid = switch.pid
        print(
            f"switch up: SIP {HOST}:{switch.sip_port}, pid {pid}, RTP {args.rtp_address} "
            f"{args.rtp_range} (room for {capacity} calls), open-file limit {fd_limit}",
            flush=True,
        )
        time.sleep(args.idle_seconds)  # let start-up allocations settle before the baseline
        idle = proc_status_kb(pid)
        idle_fds = open_fds(pid)
        result["idle"] = {"rss_kb": idle.get("VmRSS"), "hwm_kb": idle.get("VmHWM"),
                          "rss_anon_kb": idle.get("RssAnon"), "fds": idle_fds}  # fmt: skip
        print(f"idle: VmRSS {idle.get('VmRSS')} kB, {idle_fds} fds", flush=True)

        stepdir = run_dir / "sipp"
        uas_cmd = SippCommand(
            SCENARIOS / "uas.xml", ports.uas, ports.uas_media, ports.uas_control, stepdir, "uas",
            extra=["-m", str(n), "-recv_timeout", str(hold_ms + 60_000)],
        )  # fmt: skip
        uac_cmd = SippCommand(
            SCENARIOS / "uac.xml", ports.uac, ports.uac_media, ports.uac_control, stepdir, "uac",
            remote=f"{HOST}:{switch.sip_port}",
            extra=["-s", DIALLED, "-key", "caller", CALLER, "-r", str(args.rate), "-rp", "1000",
                   "-m", str(n), "-l", str(n), "-d", str(hold_ms),
                   "-default_behaviors", "all,-abortunexp", "-recv_timeout", "10000"],
        )  # fmt: skip
        stepdir.mkdir(parents=True, exist_ok=True)
        uas = Proc(uas_cmd.argv(sipp), log=stepdir / "uas.out", cwd=stepdir)
        time.sleep(0.5)
        uac = Proc(uac_cmd.argv(sipp), log=stepdir / "uac.out", cwd=stepdir)
        t0 = time.monotonic()
        last_print = 0.0
        last_progress, last_established = t0, -1
        while True:
            time.sleep(1.0)
            now = time.monotonic() - t0
            created, est, failed = established_calls(uac_cmd.stat_file)
            uas_failed = SippCounters.from_csv(uas_cmd.stat_file).failed
            st = proc_status_kb(pid)
            sample = {"t_s": round(now, 1), "placed": created, "established": est,
                      "failed": failed + uas_failed, "rss_kb": st.get("VmRSS"),
                      "fds": open_fds(pid), "loadavg": loadavg()}  # fmt: skip
            samples.append(sample)
            if sample["failed"] and first_failure is None:
                first_failure = f"{sample['failed']} failed calls at {est} established"
            if not sample["failed"] and est >= best_clean and st.get("VmRSS"):
                best_clean, rss_at_best = est, st["VmRSS"]
            if est != last_established:
                last_progress, last_established = time.monotonic(), est
            if now - last_print >= args.progress or est >= n:
                last_print = now
                print(
                    f"  {now:6.1f} s: placed {created:6d}, established {est:6d}, failed "
                    f"{sample['failed']}, VmRSS {sample['rss_kb']} kB, fds {sample['fds']}, "
                    f"load {sample['loadavg']:.2f}",
                    flush=True,
                )
            if est >= n:
                break
            if not switch.alive():
                first_failure = first_failure or "the switch died"
                break
            if first_failure or not uac.alive():
                break
            if now > budget or time.monotonic() - last_progress > args.stall:
                first_failure = first_failure or f"stalled at {est} established"
                break

        all_up = best_clean >= n and first_failure is None
        if all_up:
            # Every call is up: hold, then measure the steady state.
            time.sleep(min(args.hold, 5.0))
        at_n = proc_status_kb(pid)
        fds_at_n = open_fds(pid)
        rss_n = at_n.get("VmRSS")
        idle_rss = idle.get("VmRSS")
        per_call = (rss_n - idle_rss) / best_clean if rss_n and idle_rss and best_clean else None
        # The slope of RSS over established calls during the ramp (ignores one-off growth).
        pts = [(float(s["established"]), float(s["rss_kb"])) for s in samples
               if s["rss_kb"] and not s["failed"] and s["established"] > 0]  # fmt: skip
        ramp_slope = slope([p[0] for p in pts], [p[1] for p in pts])
        result.update({
            "all_established": all_up,
            "max_established_clean": best_clean,
            "first_failure": first_failure,
            "ramp_s": round(time.monotonic() - t0, 1),
            "at_max": {"rss_kb": rss_n, "hwm_kb": at_n.get("VmHWM"),
                       "rss_anon_kb": at_n.get("RssAnon"), "fds": fds_at_n,
                       "rss_kb_when_reached": rss_at_best},
            "kb_per_call": None if per_call is None else round(per_call, 2),
            "kb_per_call_slope": None if ramp_slope is None else round(ramp_slope, 2),
            "sockets_per_call": (
                round((fds_at_n - idle_fds) / best_clean, 2) if best_clean else None
            ),
        })  # fmt: skip

        if all_up and args.hangup:
            # The UAC hangs every call up after -d; wait for it (bounded), then re-measure.
            print("hanging up (the UAC sends BYE per call at the ramp rate) ...", flush=True)
            uac_exit = uac.wait(ramp_s + args.hold + 60.0)
            uas_exit = uas.wait(10.0)
            time.sleep(args.idle_seconds)
            # Ended calls' sockets stay parked for reuse until idle for PARK_IDLE seconds.
            parked_until = time.monotonic() + PARK_IDLE + 5.0
            while open_fds(pid) > idle_fds and time.monotonic() < parked_until:
                time.sleep(0.2)
            after = proc_status_kb(pid)
            uac_c = SippCounters.from_csv(uac_cmd.stat_file)
            result["after_hangup"] = {
                "rss_kb": after.get("VmRSS"),
                "fds": open_fds(pid),
                "uac_successful": uac_c.successful,
                "uac_failed": uac_c.failed,
                "uac_exit": uac_exit,
                "uas_exit": uas_exit,
            }
            result["hung_up"] = uac_c.successful == n and uac_c.failed == 0
        else:
            result["hung_up"] = None
    finally:  # also on Ctrl-C: stop SIPp and the switch by their PIDs
        for proc in (uac, uas):
            if proc is not None:
                proc.stop()
        switch.stop()
    result["samples"] = samples
    result["switch"] = switch.info()
    return result


# --------------------------------------------------------------------------- report


def print_report(r: dict[str, Any]) -> None:
    n = r["calls"]
    best = r.get("max_established_clean", 0)
    kb = r.get("kb_per_call")
    kb_slope = r.get("kb_per_call_slope")
    print()
    print(
        f"established calls (none failed): {best} of {n}"
        + ("" if r.get("first_failure") is None else f"; stopped: {r['first_failure']}")
    )
    idle, at = r.get("idle", {}), r.get("at_max", {})
    print(
        f"switch VmRSS idle {idle.get('rss_kb')} kB -> {at.get('rss_kb')} kB with {best} "
        f"calls (VmHWM {at.get('hwm_kb')} kB); fds {idle.get('fds')} -> {at.get('fds')} "
        f"({r.get('sockets_per_call')} per call)"
    )
    print(f"memory per call: {kb} kB (RSS delta / N), {kb_slope} kB (slope over the ramp)")
    if r.get("after_hangup"):
        a = r["after_hangup"]
        print(
            f"after hangup: VmRSS {a['rss_kb']} kB, fds {a['fds']}, UAC calls completed "
            f"{a['uac_successful']}, failed {a['uac_failed']}"
        )
    if r.get("fd_limit", 0) < r.get("fds_needed", 0):
        cap = (r["fd_limit"] - (idle.get("fds") or 0)) // SOCKETS_PER_CALL
        print(f"the open-file limit {r['fd_limit']} (could not be raised to {r['fds_needed']}) "
              f"caps the switch at about {cap} calls")  # fmt: skip
    calls_met = best >= TARGET_CALLS
    kb_met = kb is not None and kb < TARGET_KB_PER_CALL
    print(
        f"target >= {TARGET_CALLS} established calls: "
        f"{'met' if calls_met else 'NOT met'} ({best}"
        + (", this run asked for fewer)" if n < TARGET_CALLS else ")")
    )
    print(f"target < {TARGET_KB_PER_CALL:g} kB per bridged call: "
          f"{'met' if kb_met else 'NOT met'} ({kb} kB)")  # fmt: skip


def plot(r: dict[str, Any], path: Path) -> Path | None:
    """VmRSS and open fds vs established calls, when matplotlib is installed."""
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    except Exception:
        return None
    pts = [s for s in r["samples"] if s["rss_kb"] and s["fds"] >= 0]
    if not pts:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = [s["established"] for s in pts]
    ax1.plot(x, [s["rss_kb"] / 1024.0 for s in pts], marker=".")
    ax1.set(xlabel="established calls", ylabel="MiB", title="switch VmRSS")
    ax2.plot(x, [s["fds"] for s in pts], marker=".")
    ax2.set(xlabel="established calls", ylabel="open fds", title="switch file descriptors")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.concurrent", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke mode: 40 calls at 20 cps, 1 s hold (CI; < 30 s)"
    )
    p.add_argument("--calls", type=int, help=f"calls to hold (N; {TARGET_CALLS}; 40 quick)")
    p.add_argument("--rate", type=float, help="ramp rate, calls/s (150; 20 quick)")
    p.add_argument("--hold", type=float, help="seconds all N calls stay up (10; 1 quick)")
    p.add_argument(
        "--settle",
        type=float,
        default=5.0,
        help="slack (s) added to each call's length for the ramp to finish (5)",
    )
    p.add_argument(
        "--stall",
        type=float,
        default=30.0,
        help="give up when no call got established for this many seconds (30)",
    )
    p.add_argument("--idle-seconds", type=float, help="settle before idle/after measures (3)")
    p.add_argument("--progress", type=float, default=5.0, help="seconds between progress lines")
    p.add_argument(
        "--rtp-range",
        default="12000-59999",
        help="the switch's RTP ports (12000-59999: 12000 calls at 4 ports each)",
    )
    p.add_argument(
        "--rtp-address",
        default="127.0.0.2",
        help="the switch's RTP address (127.0.0.2: its own loopback address, so "
        "the 48000 ports held do not collide with 127.0.0.1 listeners)",
    )
    p.add_argument(
        "--no-hangup",
        dest="hangup",
        action="store_false",
        help="stop SIPp at N instead of letting it hang every call up",
    )
    p.add_argument(
        "--start-timeout",
        type=float,
        default=20.0,
        help="seconds the switch may take to come up (20)",
    )
    p.add_argument(
        "--out",
        default=str(REPO / "bench" / "results"),
        help="results folder (default bench/results)",
    )
    return p  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quick = args.quick
    if args.calls is None:
        args.calls = 40 if quick else TARGET_CALLS
    if args.rate is None:
        args.rate = 20.0 if quick else 150.0
    if args.hold is None:
        args.hold = 1.0 if quick else 10.0
    if args.idle_seconds is None:
        args.idle_seconds = 1.0 if quick else 3.0
    if args.calls < 1 or args.rate <= 0:
        print("--calls and --rate must be positive", file=sys.stderr)
        return 2
    sipp = sipp_binary()
    if sipp is None:
        print("SIPp not installed: apt-get install sip-tester", file=sys.stderr)
        return EXIT_UNAVAILABLE
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(args.out).resolve() / f"concurrent-{'quick-' if quick else ''}{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    why = Softswitch(run_dir, args).unavailable()
    if why:
        print(f"softswitch: {why}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(
        f"concurrent-calls benchmark{' (quick)' if quick else ''}: {args.calls} calls at "
        f"{args.rate:g} cps, held {args.hold:g} s; results in {run_dir}",
        flush=True,
    )
    started = dt.datetime.now().isoformat(timespec="seconds")
    try:
        result = run(args, sipp, run_dir)
        error = None
    except Exception as exc:  # a harness failure: report it with what was measured
        result, error = {"calls": args.calls}, f"{type(exc).__name__}: {exc}"
        print(f"error: {error}", file=sys.stderr, flush=True)
    if error is None:
        print_report(result)
    doc = {
        "benchmark": "concurrent",
        "quick": quick,
        "started": started,
        "finished": dt.datetime.now().isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "platform": platform.platform(), "sipp": sipp},
        "targets": {"calls": TARGET_CALLS, "kb_per_call": TARGET_KB_PER_CALL},
        "error": error,
        **result,
    }  # fmt: skip
    (run_dir / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    write_csv(run_dir / "samples.csv", result.get("samples", []), SAMPLE_COLUMNS)
    png = plot(result, run_dir / "concurrent.png") if result.get("samples") else None
    print(f"\nresults: {run_dir / 'results.json'}\n         {run_dir / 'samples.csv'}"
          + (f"\n         {png}" if png else ""))  # fmt: skip
    with contextlib.suppress(OSError):
        latest = Path(args.out).resolve() / ("concurrent-latest-quick" if quick else
                                             "concurrent-latest")  # fmt: skip
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(run_dir.name)
    ok = error is None and result.get("all_established") and result.get("hung_up") is not False
    return EXIT_OK if ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
