#!/usr/bin/env bash
# Builds and packs the npm package `tally-client` (js/tally-client/: TypeScript, no runtime
# dependencies) into <cargo target dir>/js/tally-client/ (target/js/tally-client/ unless
# CARGO_TARGET_DIR says otherwise; never committed), and its tarball beside it,
# <target>/js/tally-client-<version>.tgz. Prints the package folder on stdout, the progress on
# stderr. tests/tests/e2e/client.rs tests what it makes (docs/client.md).
#
#   dist/      the ES modules and their .d.ts, compiled by the pinned TypeScript
#              (node_modules/.bin/tsc, from the root package.json) with
#              js/tally-client/tsconfig.json: index.js (the browser-safe entry) and server.js
#              (tally-client/server, the write key's entry)
#   example/   the example page (a like button and a viewers-now badge)
#   package.json, README.md   from js/tally-client/, with the workspace's version and license
#
# It fails when the browser entry's imports reach the server entry: the write key's code must
# stay out of browser bundles.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

log() { printf '[build-client] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

tsc=$root/node_modules/.bin/tsc
[ -x "$tsc" ] || die "no $tsc: run scripts/bootstrap.sh (npm ci installs the pinned typescript)"

target_dir=${CARGO_TARGET_DIR:-$root/target}
case $target_dir in /*) ;; *) target_dir=$root/$target_dir ;; esac
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
license=$(sed -n '/^\[workspace.package\]/,/^\[/s/^license = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] && [ -n "$license" ] || die "Cargo.toml's [workspace.package] has no version or license"

# Build beside the result and swap it in at the end: never a half-made package in its place.
out=$target_dir/js/tally-client
stage=$target_dir/js/.tally-client.partial
rm -rf "$stage"
mkdir -p "$stage"

log "tsc $("$tsc" --version | awk '{ print $2 }'): js/tally-client/src -> dist/"
"$tsc" -p js/tally-client/tsconfig.json --outDir "$stage/dist"
cp -R js/tally-client/example "$stage/example"

node -e '
  const fs = require("fs");
  const { join } = require("path");
  const [src, dst, version, license] = process.argv.slice(1);
  const { name, ...rest } = JSON.parse(fs.readFileSync(join(src, "package.json"), "utf8"));
  const pkg = { name, version, license, ...rest };
  fs.writeFileSync(join(dst, "package.json"), JSON.stringify(pkg, null, 2) + "\n");
  fs.copyFileSync(join(src, "README.md"), join(dst, "README.md"));

  // The browser entry must not reach the server entry through any import.
  const seen = new Set();
  const walk = (file) => {
    if (seen.has(file)) return;
    seen.add(file);
    const text = fs.readFileSync(file, "utf8");
    for (const m of text.matchAll(/(?:import|export)[^"]*?from\s*"(\.[^"]+)"|import\s*\(\s*"(\.[^"]+)"\s*\)/g)) {
      walk(join(file, "..", m[1] ?? m[2]));
    }
  };
  walk(join(dst, "dist/index.js"));
  const leaked = [...seen].filter((f) => f.endsWith("/server.js"));
  if (leaked.length > 0 || seen.size < 2) {
    console.error(`the browser entry reaches ${leaked.join(", ") || "nothing (imports not followed)"}`);
    process.exit(1);
  }
' js/tally-client "$stage" "$version" "$license" || die "the browser entry imports the server entry"

rm -rf "$out"
mv "$stage" "$out"
log "npm pack"
tarball=$(cd "$target_dir/js" && npm pack "$out" --silent --no-fund --no-audit)
[ -f "$target_dir/js/$tarball" ] || die "npm pack made no tarball"
log "built $out ($(du -sh "$out" | cut -f1)), packed $target_dir/js/$tarball"
printf '%s\n' "$out"
