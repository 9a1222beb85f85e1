#!/usr/bin/env python3
"""A long fuzz run, by hand: the property tests of tests/test_properties.py with many more examples.

    python3 fuzz/run.py                      # 20,000 examples per property, one round
    python3 fuzz/run.py --minutes 30         # rounds with fresh seeds until 30 minutes have passed
    python3 fuzz/run.py --examples 5000 -k routing

Each round runs pytest on tests/test_properties.py with HACHECK_PROPERTY_EXAMPLES set and a new
hypothesis seed (printed, so a failure can be replayed with --seed). Exits non-zero on the first
failing round; hypothesis prints the smallest failing example.
"""

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20000, help="examples per property and round (20000)")
    parser.add_argument("--minutes", type=float, default=0, help="keep starting rounds until this many minutes")
    parser.add_argument("--seed", type=int, help="replay one round with this hypothesis seed")
    parser.add_argument("-k", dest="keyword", help="only the properties whose name matches (pytest -k)")
    args = parser.parse_args()

    env = dict(os.environ, HACHECK_PROPERTY_EXAMPLES=str(args.examples))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    started = time.monotonic()
    rounds = 0
    while True:
        seed = args.seed if args.seed is not None else random.randrange(2**32)
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "0",
                f"--hypothesis-seed={seed}", str(REPO_ROOT / "tests" / "test_properties.py")]
        if args.keyword:
            argv += ["-k", args.keyword]
        print(f"round {rounds + 1}: {args.examples} examples per property, seed {seed}", flush=True)
        round_started = time.monotonic()
        result = subprocess.run(argv, cwd=REPO_ROOT, env=env)
        rounds += 1
        print(f"round {rounds}: exit {result.returncode} in {time.monotonic() - round_started:.0f}s", flush=True)
        if result.returncode != 0:
            print(f"FAILED: replay with: python3 fuzz/run.py --examples {args.examples} --seed {seed}")
            return 1
        if args.seed is not None or time.monotonic() - started >= args.minutes * 60:
            break
    print(f"passed: {rounds} round(s), {rounds * args.examples} examples per property, "
          f"{time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
