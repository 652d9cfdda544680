#!/usr/bin/env python3
"""Lists every time bound the tests asserted against the times they measured.

    python3 scripts/timings.py FILE...      # the TALLY_TIMINGS files of one run or several

Each line of a file is `what<TAB>measured ms<TAB>bound ms`, written by the end-to-end harness
(`tally_e2e::record_timing`, from `wait_until` and `assert_within`). scripts/test.sh writes one
file per run, `<target>/tally-test/timings.tsv`. For each `what` this prints how often it was
measured, the largest time, the bound and their ratio, smallest ratio first, and marks a ratio
below 5: no test may bound a time tighter than 5x the largest of 10 measurements under the test
command's load (docs/testing.md keeps the table of the recorded runs). Exits 0 either way; it
reports, it does not judge a single run.
"""

import sys
from collections import defaultdict


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    measured = defaultdict(list)
    bounds = defaultdict(set)
    for path in sys.argv[1:]:
        try:
            lines = open(path, encoding="utf-8").read().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            parts = line.split("\t")
            if len(parts) != 3:
                continue
            what, ms, bound = parts[0], int(parts[1]), int(parts[2])
            measured[what].append(ms)
            bounds[what].add(bound)
    if not measured:
        print("no timings recorded")
        return 0
    rows = []
    for what, values in measured.items():
        # A bound raised between runs counts at its latest, the largest.
        bound = max(bounds[what])
        largest = max(values)
        ratio = bound / largest if largest else float("inf")
        rows.append((ratio, what, len(values), largest, bound))
    rows.sort()
    print(f"{'ratio':>7}  {'n':>4}  {'largest ms':>10}  {'bound ms':>9}  what")
    for ratio, what, n, largest, bound in rows:
        mark = "  <- under 5x" if ratio < 5 else ""
        shown = "inf" if ratio == float("inf") else f"{ratio:.1f}"
        print(f"{shown:>7}  {n:>4}  {largest:>10}  {bound:>9}  {what}{mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
