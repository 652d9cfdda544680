#!/usr/bin/env python3
"""Builds the edge worker for each environment of wrangler.toml exactly as `wrangler deploy`
would upload it, without uploading (`wrangler deploy --dry-run --outdir`), and checks what each
one declares: the three Durable Object bindings and their classes (not inherited by
`[env.*]`, so each environment names them), the new-id rate limit (and the hit budget in each
environment, not at the top level, which is `wrangler dev`'s), every setting of the
top-level `[vars]` (vars are not inherited either), an HTTPS MERGER_URL and no region override
outside the top level (which is `wrangler dev`'s), migrations that create every bound class,
and the bundle within the platform's compressed size limit. Prints each bundle's size. Run by
the test command's build phase (scripts/test.sh); offline."""

import gzip
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WRANGLER = ROOT / "node_modules/.bin/wrangler"
OUT = ROOT / "target/deploy"
CLASSES = {"REPLICA": "Replica", "PRESENCE": "Presence", "UNIQUE": "Unique"}
RATE_LIMIT = "NEW_IDS"
HIT_BUDGET = "HITS"
# A Worker's compressed size limit on the Workers Free plan (10 MiB on paid plans).
LIMIT_GZIP = 3 * 1024 * 1024
DRY_RUN_TIMEOUT_S = 600


def fail(env, why):
    sys.exit(f"deploy check ({env}): {why}")


def dry_run(env):
    out = OUT / env
    # A module of an earlier build left there would be counted with this one.
    shutil.rmtree(out, ignore_errors=True)
    args = [str(WRANGLER), "deploy", "--dry-run", "--outdir", str(out)]
    if env != "top-level":
        args += ["--env", env]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                          timeout=DRY_RUN_TIMEOUT_S)
    text = done.stdout + done.stderr
    if done.returncode != 0 or "--dry-run: exiting now." not in text:
        print(text, file=sys.stderr)
        fail(env, f"wrangler deploy --dry-run failed ({done.returncode})")
    return out, text


def bindings(text):
    """`env.NAME (detail)  Resource` lines of wrangler's binding table."""
    found = {}
    for line in text.splitlines():
        match = re.match(r"env\.(\w+) \((.*)\)\s{2,}(\S.*?)\s*$", line)
        if match:
            found[match.group(1)] = (match.group(2), match.group(3))
    return found


def main():
    config = tomllib.loads((ROOT / "wrangler.toml").read_text())
    settings = set(config["vars"])
    created = {c for m in config.get("migrations", []) for c in m.get("new_sqlite_classes", [])}
    for env in ["top-level", *config.get("env", {})]:
        section = config if env == "top-level" else config["env"][env]
        out, text = dry_run(env)
        found = bindings(text)
        for name, cls in CLASSES.items():
            if found.get(name) != (cls, "Durable Object"):
                fail(env, f"{name} is not bound to the Durable Object class {cls}: {found.get(name)}")
            if cls not in created:
                fail(env, f"no migration creates the class {cls}")
        if found.get(RATE_LIMIT, ("", ""))[1] != "Rate Limit":
            fail(env, f"no {RATE_LIMIT} rate limit")
        budget = found.get(HIT_BUDGET, ("", ""))[1] == "Rate Limit"
        if budget != (env != "top-level"):
            fail(env, f"the {HIT_BUDGET} rate limit belongs to each environment, not the top level")
        declared = {n for n, (_, kind) in found.items() if kind == "Environment Variable"}
        if declared != settings:
            fail(env, f"settings differ from the top-level [vars]: missing "
                      f"{sorted(settings - declared)}, extra {sorted(declared - settings)}")
        vars_ = section.get("vars", {})
        if env != "top-level":
            if not vars_.get("MERGER_URL", "").startswith("https://"):
                fail(env, f"MERGER_URL is not HTTPS: {vars_.get('MERGER_URL')!r}")
            if vars_.get("ALLOW_REGION_OVERRIDE") != "false":
                fail(env, "ALLOW_REGION_OVERRIDE must be false outside wrangler dev")
        upload = re.search(r"Total Upload: ([\d.]+) KiB / gzip: ([\d.]+) KiB", text)
        if not upload:
            fail(env, "wrangler printed no upload size")
        files = [p for p in out.iterdir() if p.suffix in (".js", ".mjs", ".wasm")]
        if not any(p.suffix == ".wasm" for p in files):
            fail(env, f"no Wasm module in {out}")
        gz = sum(len(gzip.compress(p.read_bytes(), 9)) for p in files)
        if gz > LIMIT_GZIP:
            fail(env, f"the bundle is {gz} B gzip, over the platform's {LIMIT_GZIP}")
        name = section.get("name", f"{config['name']}-{env}" if env != "top-level" else config["name"])
        print(f"{env}: Worker {name!r}, {len(found)} bindings, upload {upload.group(1)} KiB "
              f"({upload.group(2)} KiB gzip as wrangler counts it; {gz} B gzip -9 of "
              f"{', '.join(p.name for p in sorted(files))}), limit {LIMIT_GZIP} B")


if __name__ == "__main__":
    main()
