#!/usr/bin/env python3
"""Checks ops/: the Prometheus rules (`promtool check rules`), their unit tests (`promtool test
rules`), every Grafana panel's expression (as a rule, `promtool check rules`), and that every
metric the rules and panels name is one a live merger exports: it starts the merger binary
(TALLY_E2E_MERGER_BIN, or target/debug/tally-merger) on loopback with a throwaway SQLite
database, sends it one sync as an edge does (so the families labelled by region have a
member), reads its /metrics (OpenMetrics; the `# TYPE` lines name every family that has a
member or no labels), and stops it. Run by the test command (scripts/test.sh, native lane)."""

import json
import os
import re
import select
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "ops/prometheus/tally-rules.yml"
RULE_TESTS = ROOT / "ops/prometheus/tally-rules.test.yml"
DASHBOARDS = sorted((ROOT / "ops/grafana").glob("*.json"))
# Series Prometheus makes itself, not a merger.
SYNTHETIC = {"up"}
START_LIMIT_S = 60
REQUEST_TIMEOUT_S = 10


SYNC_TOKEN = "check-ops-sync-token-0123456789"


def run(*args):
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run(args, check=True, timeout=120)


def panel_exprs(dashboard):
    exprs = []
    for panel in json.loads(dashboard.read_text())["panels"]:
        for target in panel.get("targets", []):
            exprs.append((panel["title"], target["expr"]))
    return exprs


def exported_series(binary):
    """The series names a live merger's /metrics can have, from its `# TYPE` lines."""
    with tempfile.TemporaryDirectory() as tmp:
        merger = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0", "--database-url", f"sqlite://{tmp}/tally.db",
             "--sync-token", SYNC_TOKEN, "--log", "warn"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        try:
            url = None
            while url is None:
                ready, _, _ = select.select([merger.stdout], [], [], START_LIMIT_S)
                if not ready:
                    sys.exit(f"the merger did not say where it listens within {START_LIMIT_S} s")
                line = merger.stdout.readline()
                if not line:
                    sys.exit("the merger exited before listening")
                if line.startswith("listening on "):
                    url = line.removeprefix("listening on ").strip()
            # Series with a label per region appear once a sync names one: one sync, as an
            # edge sends it (with the age of its oldest unsynced hit).
            sync = json.dumps({"version": 2, "replica": "c" * 32, "region": "eu",
                               "counters": [{"id": "check-ops", "kind": "g", "p": 1, "n": 0}]})
            request = urllib.request.Request(
                f"{url}/v1/sync", data=sync.encode(), method="POST",
                headers={"Authorization": f"Bearer {SYNC_TOKEN}",
                         "Content-Type": "application/json", "Tally-Unsynced-Age": "1500"})
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
                response.read()
            with urllib.request.urlopen(f"{url}/metrics", timeout=REQUEST_TIMEOUT_S) as response:
                text = response.read().decode()
        finally:
            merger.terminate()
            try:
                merger.wait(timeout=20)
            except subprocess.TimeoutExpired:
                merger.kill()
    series = set()
    for line in text.splitlines():
        match = re.match(r"# TYPE (\S+) (\S+)", line)
        if not match:
            continue
        name, kind = match.groups()
        suffixes = {
            "counter": ["_total", "_created"],
            "histogram": ["_bucket", "_sum", "_count", "_created"],
            "summary": ["", "_sum", "_count", "_created"],
            "info": ["_info"],
        }.get(kind, [""])
        series.update(name + s for s in suffixes)
    if not series:
        sys.exit("the merger's /metrics named no metric family")
    return series


def main():
    promtool = "promtool"
    run(promtool, "check", "rules", RULES)
    run(promtool, "test", "rules", RULE_TESTS)
    named = {}
    rules_text = RULES.read_text()
    for n in re.findall(r"\b(tally_[a-z0-9_]+|up)\b", rules_text):
        named.setdefault(n, set()).add(RULES.name)
    with tempfile.TemporaryDirectory() as tmp:
        for dashboard in DASHBOARDS:
            exprs = panel_exprs(dashboard)
            if not exprs:
                sys.exit(f"{dashboard.name}: no panel expression")
            # Each panel's expression as a recording rule: promtool parses and checks it.
            lines = ["groups:", f"  - name: {dashboard.stem}", "    rules:"]
            for i, (title, expr) in enumerate(exprs):
                lines += [f"      - record: panel:{i}", f"        expr: {json.dumps(expr)}"]
                for n in re.findall(r"\b(tally_[a-z0-9_]+|up)\b", expr):
                    named.setdefault(n, set()).add(f"{dashboard.name} ({title})")
            checked = Path(tmp) / f"{dashboard.stem}.rules.yml"
            checked.write_text("\n".join(lines) + "\n")
            run(promtool, "check", "rules", checked)
    binary = os.environ.get("TALLY_E2E_MERGER_BIN") or str(ROOT / "target/debug/tally-merger")
    exported = exported_series(binary) | SYNTHETIC
    missing = {n: sorted(where) for n, where in named.items() if n not in exported}
    if missing:
        for n, where in sorted(missing.items()):
            print(f"{n}: named in {', '.join(where)}, but no merger exports it", file=sys.stderr)
        sys.exit(1)
    print(f"ops: {len(named)} metrics named by the rules and dashboards, each one a merger exports")


if __name__ == "__main__":
    main()
