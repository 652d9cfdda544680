#!/usr/bin/env bash
# Installs whatever tally needs and this machine lacks; skips what is already present at the
# right version, so a warm machine passes through in seconds. Safe to run any number of times.
#
#   Rust      the toolchain pinned in rust-toolchain.toml, with the wasm32 and thumbv7em targets
#   cargo     wasm-bindgen-cli at exactly the wasm-bindgen version in Cargo.lock (it brings
#             wasm-bindgen-test-runner), built with the lock file in scripts/locks/ (its own
#             names a webpki-roots the registry no longer serves); worker-build (builds the
#             edge worker), with its own lock file (`cargo install --locked`)
#   npm       package.json pins, installed with `npm ci` from package-lock.json: wrangler
#             (workerd, offline), esbuild and binaryen's wasm-opt (worker-build uses these
#             instead of downloading its own, which fails without internet; wasm-opt also
#             shrinks the tally-crdt npm package), typescript (checks that package's types)
#   apt       postgresql (Debian's package: initdb, pg_ctl, psql), for the merger's Postgres
#             store; the tests start throwaway clusters of their own (tests/src/postgres.rs),
#             never the system one. Needs root; TALLY_NO_POSTGRES=1 skips it (and those tests)
#   PyPI      schemathesis at SCHEMATHESIS_VERSION and every package it needs, each pinned in
#             scripts/locks/schemathesis-*.txt, in a venv of its own under ~/.cache/tally/
#             (the contract test, tests/tests/e2e/contract.rs, runs its `st`)
#   apt       chromium-headless-shell (Debian's package: /usr/bin/chromium-headless-shell), the
#             browser the dashboard's test drives through playwright-core (tests/browser/).
#             Needs root; TALLY_NO_BROWSER=1 skips it (and that test)
#   apt       prometheus (Debian's package, for its promtool): the test command checks and
#             unit-tests the alert rules and the dashboard's queries in ops/
#             (scripts/check-ops.py). Needs root
#
# Each is installed only when missing or at another version. When one cannot be installed the
# script stops with a message naming it. Under CI=true nothing may be skipped: TALLY_NO_POSTGRES=1
# and TALLY_NO_BROWSER=1 are refused (scripts/fuzz.sh likewise refuses to skip the fuzzing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WORKER_BUILD_VERSION=0.8.7
SCHEMATHESIS_VERSION=4.32.5

log() { printf '[bootstrap] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [ "${CI:-}" = true ]; then
  for skip in TALLY_NO_POSTGRES TALLY_NO_BROWSER; do
    [ "${!skip:-}" != 1 ] || die "$skip=1 under CI=true: CI runs every test, none may be skipped"
  done
fi

export PATH="$HOME/.cargo/bin:$PATH"
command -v rustup >/dev/null || die "rustup is required (https://rustup.rs); it installs the pinned toolchain"
command -v node >/dev/null || die "Node.js >= 20 is required (wrangler 4.86 runs on Node 20)"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "Node.js >= 20 is required, found $(node --version)"

# --- Rust: rust-toolchain.toml names the channel, components and targets; rustup installs
# what is missing of them on first use. Ask explicitly so a failure shows here.
toolchain=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
rustup toolchain list | grep -q "^$toolchain" || { log "installing Rust $toolchain"; rustup toolchain install "$toolchain" --profile minimal -c rustfmt -c clippy; }
for target in wasm32-unknown-unknown thumbv7em-none-eabihf; do
  rustup target list --installed --toolchain "$toolchain" | grep -qx "$target" || {
    log "adding Rust target $target"
    rustup target add --toolchain "$toolchain" "$target"
  }
done

# --- cargo-installed tools, each at a pinned version, built with a pinned lock file.
have_tool() { command -v "$1" >/dev/null && "$1" --version 2>/dev/null | grep -qw "$2"; }

# install_tool CRATE VERSION BINARY: `cargo install --locked`, with the lock file the crate
# was published with.
install_tool() {
  local crate=$1 version=$2 binary=$3
  have_tool "$binary" "$version" && return
  log "installing $crate $version (a few minutes, once)"
  cargo install "$crate" --version "$version" --locked ||
    die "cargo install $crate $version --locked failed: $binary is missing"
}

# install_with_lock CRATE VERSION BINARY SHA256 LOCK: `cargo install --locked` of the crate's
# published source (checked against SHA256) with LOCK in place of its own lock file. For a
# crate whose lock names a version the registry no longer serves (wasm-bindgen-cli 0.2.130:
# webpki-roots 1.0.11, yanked; the lock in scripts/locks/ differs from the published one in
# that package alone, at 1.0.10), where `--locked` fails and a fresh resolution would take
# whatever the registry serves that day.
install_with_lock() {
  local crate=$1 version=$2 binary=$3 sha256=$4 lock=$5 dir dl
  have_tool "$binary" "$version" && return
  log "installing $crate $version with $lock (a few minutes, once)"
  dir=$(mktemp -d)
  # The registry's download address, as cargo finds it (the index's config.json).
  dl=$(curl -sSf --retry 3 https://index.crates.io/config.json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["dl"])') ||
    die "cannot reach the crates.io index to download $crate $version: $binary is missing"
  case $dl in
    *'{crate}'*|*'{version}'*) dl=${dl//\{crate\}/$crate}; dl=${dl//\{version\}/$version} ;;
    *) dl=$dl/$crate/$version/download ;;
  esac
  curl -sSfL --retry 3 -o "$dir/src.crate" "$dl" ||
    die "cannot download $crate $version ($dl): $binary is missing"
  echo "$sha256  $dir/src.crate" | sha256sum -c --quiet ||
    die "$crate $version downloaded from $dl is not the published crate (sha256 differs)"
  tar -xzf "$dir/src.crate" -C "$dir"
  cp "$lock" "$dir/$crate-$version/Cargo.lock"
  cargo install --locked --path "$dir/$crate-$version" ||
    die "cargo install of $crate $version with $lock failed: $binary is missing"
  rm -rf "$dir"
}

wasm_bindgen_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
[ -n "$wasm_bindgen_version" ] || die "no wasm-bindgen in Cargo.lock"
wasm_bindgen_lock=scripts/locks/wasm-bindgen-cli-$wasm_bindgen_version.Cargo.lock
[ -f "$wasm_bindgen_lock" ] ||
  die "Cargo.lock asks for wasm-bindgen $wasm_bindgen_version and there is no $wasm_bindgen_lock: add the lock of wasm-bindgen-cli $wasm_bindgen_version (and its sha256 here)"
install_with_lock wasm-bindgen-cli "$wasm_bindgen_version" wasm-bindgen \
  c37f6904387d19a319525c74af274c73912f3871c35555aa49f3ea64ebb2fc7a "$wasm_bindgen_lock"
install_tool worker-build "$WORKER_BUILD_VERSION" worker-build

# --- Postgres: Debian keeps the server binaries in /usr/lib/postgresql/<version>/bin, off
# PATH. The package may create and start a system cluster on port 5432; nothing of tally's
# uses it (the tests run their own on free loopback ports).
have_postgres() {
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null
}
if ! have_postgres; then
  if [ "${TALLY_NO_POSTGRES:-}" = 1 ]; then
    log "Postgres is missing; skipping it (TALLY_NO_POSTGRES=1: the Postgres tests skip too)"
  elif [ "$(id -u)" -eq 0 ]; then
    log "installing postgresql (Debian package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
    have_postgres || die "postgresql is installed, yet no initdb under /usr/lib/postgresql/*/bin"
  else
    die "Postgres is missing (no initdb under /usr/lib/postgresql/*/bin or on PATH) and installing it needs root: run this script as root, or install it yourself (sudo apt-get install postgresql), or set TALLY_NO_POSTGRES=1 to skip the Postgres tests"
  fi
fi

# --- promtool (Debian's prometheus package) for the checks of ops/ (scripts/check-ops.py).
if ! command -v promtool >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    log "installing prometheus (Debian package, for promtool)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
    command -v promtool >/dev/null || die "prometheus is installed, yet there is no promtool"
  else
    die "promtool is missing and installing it needs root: run this script as root, or install it yourself (sudo apt-get install prometheus)"
  fi
fi

# --- Headless Chromium for the dashboard's browser test (tests/tests/e2e/dashboard.rs). Debian's
# package, not a browser download of playwright's own (which needs more than the registries).
have_chromium() {
  [ -x /usr/bin/chromium-headless-shell ] || command -v chromium-headless-shell >/dev/null
}
if ! have_chromium; then
  if [ "${TALLY_NO_BROWSER:-}" = 1 ]; then
    log "chromium-headless-shell is missing; skipping it (TALLY_NO_BROWSER=1: the browser test skips too)"
  elif [ "$(id -u)" -eq 0 ]; then
    log "installing chromium-headless-shell (Debian package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium-headless-shell
    have_chromium || die "chromium-headless-shell is installed, yet there is no /usr/bin/chromium-headless-shell"
  else
    die "chromium-headless-shell is missing and installing it needs root: run this script as root, or install it yourself (sudo apt-get install chromium-headless-shell), or set TALLY_NO_BROWSER=1 to skip the dashboard's browser test"
  fi
fi

# --- schemathesis (PyPI) for the contract test, in a venv of its own so nothing else of the
# machine's Python changes: every package of scripts/locks/schemathesis-*.txt at its pinned
# version; one venv per version (where tests/tests/e2e/contract.rs finds `st`), reused by
# every clone, made again when the lock file changes (its hash is kept in the venv).
schemathesis_lock=scripts/locks/schemathesis-$SCHEMATHESIS_VERSION.txt
[ -f "$schemathesis_lock" ] || die "no $schemathesis_lock for schemathesis $SCHEMATHESIS_VERSION"
schemathesis_venv="$HOME/.cache/tally/schemathesis-$SCHEMATHESIS_VERSION"
lock_hash=$(sha256sum "$schemathesis_lock" | cut -d' ' -f1)
if [ "$(cat "$schemathesis_venv/.tally-lock.sha256" 2>/dev/null)" != "$lock_hash" ] ||
  ! "$schemathesis_venv/bin/st" --version 2>/dev/null | grep -qw "$SCHEMATHESIS_VERSION"; then
  command -v python3 >/dev/null || die "python3 (>= 3.10) is required for schemathesis, the contract test"
  log "installing schemathesis $SCHEMATHESIS_VERSION (PyPI, $schemathesis_lock) into $schemathesis_venv"
  rm -rf "$schemathesis_venv"
  python3 -m venv "$schemathesis_venv" ||
    die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
  "$schemathesis_venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$schemathesis_lock" ||
    die "pip could not install $schemathesis_lock: schemathesis is missing"
  "$schemathesis_venv/bin/pip" check --disable-pip-version-check >/dev/null ||
    die "$schemathesis_lock is incomplete: pip check finds a dependency missing"
  echo "$lock_hash" > "$schemathesis_venv/.tally-lock.sha256"
fi

# --- npm: reinstall only when package-lock.json changed since the last install.
stamp=node_modules/.tally-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing npm packages from package-lock.json"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi

log "ready"
