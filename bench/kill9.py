"""``kill -9`` endurance: 10 SIGKILLs at random moments over 1,000 scheduled calls.

The full-size form of ``tests/test_kill9.py`` (which CI runs scaled down): a switch process
with a SIPp UAS as its trunk and a webhook receiver; scheduled calls spread over ``--spread``
seconds; the switch is killed and restarted on the same store ``--kills`` times. Prints the
figures as JSON and exits 1 when a guarantee broke (a call placed twice, a lost CDR or webhook
event, an inconsistent store)::

    python -m bench.kill9                       # 1,000 calls, 10 kills, over 100 s
    python -m bench.kill9 --jobs 200 --kills 4 --spread 20 --seed 3
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

# The harness lives with the test (tests/ is not a package; its peers/ helpers import as
# top-level modules, as under pytest).
_TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(_TESTS))

from test_kill9 import run_kill9  # type: ignore[import-not-found]  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run once and print the figures; 0 when every guarantee held."""
    parser = argparse.ArgumentParser(prog="python -m bench.kill9", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000, help="scheduled calls (1000)")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs (10)")
    parser.add_argument("--spread", type=float, default=100.0,
                        help="seconds the calls are spread over (100)")
    parser.add_argument("--seed", type=int, default=1, help="random kill moments (1)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep logs and the store here (default: a temporary directory)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kill9-"))
    report = asyncio.run(run_kill9(workdir, jobs=args.jobs, kills=args.kills,
                                   spread=args.spread, seed=args.seed))
    figures = dataclasses.asdict(report)
    figures["problems"] = report.problems()
    figures["workdir"] = str(workdir)
    print(json.dumps(figures, indent=2))
    return 1 if figures["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
