#!/usr/bin/env python3
"""Lists the executables a `cargo test --no-run --message-format=json…` build made.

    cargo test --no-run --message-format=json-render-diagnostics … | python3 scripts/list-test-binaries.py OUT

Reads cargo's JSON messages on stdin and writes OUT, one executable a line, tab-separated:

    role  package  kind  name  executable  directory

- role: `test` for a test harness cargo test would run (a library's, binary's, integration
  test's or bench's, built in test mode; examples are built but not run, as by cargo test),
  `bin` for a program (e.g. the merger binary the end-to-end tests start);
- directory: the package's folder, where cargo test runs that package's tests.

scripts/test.sh builds every test before the lanes start and runs them from this list, so no
lane ever runs cargo (a build inside a lane competes with the tests for the two cores). Exits 1
when the build reported no executable at all, or did not finish (`build-finished` false).
"""

import json
import os
import sys


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    rows, finished = [], None
    for line in sys.stdin:
        line = line.strip()
        if not line.startswith("{"):
            continue
        message = json.loads(line)
        reason = message.get("reason")
        if reason == "build-finished":
            finished = message.get("success")
            continue
        if reason != "compiler-artifact" or not message.get("executable"):
            continue
        target, profile = message["target"], message["profile"]
        kind = target["kind"][0]
        if profile.get("test"):
            if kind == "example":
                continue
            role = "test"
        elif kind == "bin":
            role = "bin"
        else:
            continue
        # package_id: "path+file:///…/merger#tally-merger@0.1.0" (or "…#0.1.0" when the
        # folder is named as the package); the manifest's folder is the package's.
        package = message["package_id"].rsplit("#", 1)[-1].split("@")[0]
        directory = os.path.dirname(message["manifest_path"])
        if "/" in package or package[:1].isdigit():
            package = os.path.basename(directory)
        rows.append((role, package, kind, target["name"], message["executable"], directory))
    if finished is not True:
        print("list-test-binaries: cargo's build did not finish successfully", file=sys.stderr)
        return 1
    if not rows:
        print("list-test-binaries: cargo reported no executable", file=sys.stderr)
        return 1
    with open(sys.argv[1], "w", encoding="utf-8") as out:
        for row in sorted(set(rows)):
            out.write("\t".join(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
