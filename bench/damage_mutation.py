"""The full mutation test of damage handling (issue 9): for every object kind of the repository
format, one object deleted or one byte flipped at a random position, ``--trials`` trials per kind
(split over its cells), each followed by ``verify``, ``list`` and a restore of every restore
point through the CLI; ``--starts`` of the restores are also started as real PostgreSQL servers
and their rows counted.  Every trial must either work exactly (laid-down files equal, by digest,
to a pristine restore's) or refuse with a documented exit code naming the damaged object; verify
must fail naming it and the restore points it breaks (or that none do).

    /opt/drkit/venv/bin/python bench/damage_mutation.py --trials 50 --starts 20 [--seed 9] [--threads 2]

Needs what the test suite needs (scripts/install.sh; run as root, PostgreSQL from the machine).
Prints one line per trial (a violation with the seed that replays it) and a table of counts per
cell; exits 1 if any trial violated the rules.  The in-suite version is
tests/integration/test_damage_mutation.py (one trial per cell).  Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

import damage_harness as harness  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=50, help="trials per object kind (default 50)")
    ap.add_argument("--starts", type=int, default=20, help="restores also started for real (default 20)")
    ap.add_argument("--seed", type=int, default=9, help="master seed (default 9)")
    ap.add_argument("--threads", type=int, default=2, help="commands run at once per trial (default 2)")
    ap.add_argument("--every-time", action="store_true", help="restore each range at its start, middle and end "
                    "in every trial (default: one of them per trial, chosen by the seed)")
    ap.add_argument("--replay", type=int, help="replay one trial: its seed (with --kind and --op)")
    ap.add_argument("--kind")
    ap.add_argument("--op", choices=["delete", "flip"])
    args = ap.parse_args()
    pristine = harness.build_pristine(log=lambda s: print(s, flush=True))
    try:
        if args.replay is not None:
            t = harness.run_trial(pristine, args.kind, args.op, args.replay, keep=True)
            print(f"{t.mutation.describe()}: {len(t.violations)} violation(s)")
            for v in t.violations:
                print("  " + v.text())
            return 1 if t.violations else 0
        t0 = time.monotonic()
        campaign = harness.run_campaign(pristine, harness.per_kind(args.trials), master_seed=args.seed,
                                        starts=args.starts, threads=args.threads,
                                        one_time_per_range=not args.every_time,
                                        log=lambda s: print(s, flush=True))
        print()
        print(campaign.table())
        print(f"\n{len(campaign.results)} trials in {time.monotonic() - t0:.0f} s (seed {args.seed}); "
              f"{len(campaign.violations)} violation(s)")
        return 1 if campaign.violations else 0
    finally:
        pristine.close()


if __name__ == "__main__":
    sys.exit(main())
