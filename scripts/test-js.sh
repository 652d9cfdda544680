#!/usr/bin/env bash
# Tests the npm package `tally-crdt` the way a user meets it: builds it (scripts/build-js.sh;
# with --built, takes the package that script already built and builds nothing), packs it with `npm pack`, installs the tarball into a fresh project in a temporary folder
# (no registry: the package has no dependencies), then there
#   - runs js/tally-crdt/test/*.test.{mjs,cjs} with node:test (`import` and `require` by name);
#   - type-checks js/tally-crdt/test/usage.mts against the shipped .d.ts with the pinned
#     TypeScript (node_modules/.bin/tsc), as Node resolves the package and as a bundler does.
# Step "JS package (tally-crdt in Node)" of scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

log() { printf '[test-js] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

tsc=$root/node_modules/.bin/tsc
[ -x "$tsc" ] || die "no $tsc: run scripts/bootstrap.sh (npm ci installs the pinned typescript)"

if [ "${1:-}" = --built ]; then
  # What scripts/build-js.sh made (scripts/test.sh builds it before the tests start).
  pkg=${CARGO_TARGET_DIR:-$root/target}/js/tally-crdt
  [ -f "$pkg/package.json" ] || die "no package in $pkg: run scripts/build-js.sh first"
else
  pkg=$(bash scripts/build-js.sh)
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tally-js.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

log "npm pack"
tarball=$(cd "$tmp" && npm pack "$pkg" --silent --no-fund --no-audit)
tarball=$tmp/$tarball
[ -f "$tarball" ] || die "npm pack made no tarball"

log "npm install $(basename "$tarball") into a fresh project"
app=$tmp/app
mkdir -p "$app/test"
printf '{\n  "name": "tally-crdt-user",\n  "private": true\n}\n' > "$app/package.json"
(cd "$app" && npm install --offline --ignore-scripts --no-audit --no-fund --loglevel=error "$tarball")
cp js/tally-crdt/test/*.test.mjs js/tally-crdt/test/*.test.cjs js/tally-crdt/test/usage.mts "$app/test/"

# The expected version and license, as the build read them from the workspace.
version=$(node -p 'require(process.argv[1]).version' "$pkg/package.json")
license=$(node -p 'require(process.argv[1]).license' "$pkg/package.json")
version_line=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
[ "$version" = "$version_line" ] || die "package version $version, workspace version $version_line"

log "type-checking test/usage.mts with TypeScript $("$tsc" --version | awk '{ print $2 }')"
tsc_common=(--noEmit --strict --target es2022 --lib "es2022,esnext.disposable" test/usage.mts)
(cd "$app" && "$tsc" --module nodenext --moduleResolution nodenext "${tsc_common[@]}")
(cd "$app" && "$tsc" --module esnext --moduleResolution bundler "${tsc_common[@]}")

log "node --test"
(cd "$app" && TALLY_EXPECT_VERSION=$version TALLY_EXPECT_LICENSE=$license \
  node --test test/counters.test.mjs test/require.test.cjs)
