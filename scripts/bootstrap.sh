#!/usr/bin/env bash
# Installs whatever tally needs and this machine lacks; skips what is already present at the
# right version, so a warm machine passes through in seconds. Safe to run any number of times.
#
#   Rust      the toolchain pinned in rust-toolchain.toml, with the wasm32 and thumbv7em targets
#   cargo     wasm-bindgen-cli at exactly the wasm-bindgen version in Cargo.lock (it brings
#             wasm-bindgen-test-runner), worker-build (builds the edge worker)
#   npm       package.json pins, installed with `npm ci` from package-lock.json: wrangler
#             (workerd, offline), esbuild and binaryen's wasm-opt (worker-build uses these
#             instead of downloading its own, which fails without internet; wasm-opt also
#             shrinks the tally-crdt npm package), typescript (checks that package's types)
#   apt       postgresql (Debian's package: initdb, pg_ctl, psql), for the merger's Postgres
#             store; the tests start throwaway clusters of their own (tests/src/postgres.rs),
#             never the system one. Needs root; TALLY_NO_POSTGRES=1 skips it (and those tests)
#   PyPI      schemathesis at SCHEMATHESIS_VERSION, in a venv of its own under
#             ~/.cache/tally/ (the contract test, tests/tests/contract.rs, runs its `st`)
#   apt       chromium-headless-shell (Debian's package: /usr/bin/chromium-headless-shell), the
#             browser the dashboard's test drives through playwright-core (tests/browser/).
#             Needs root; TALLY_NO_BROWSER=1 skips it (and that test)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WORKER_BUILD_VERSION=0.8.7
SCHEMATHESIS_VERSION=4.32.5

log() { printf '[bootstrap] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

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

# --- cargo-installed tools, each at a pinned version.
# install_tool CRATE VERSION BINARY: skip when BINARY --version already reports VERSION.
install_tool() {
  local crate=$1 version=$2 binary=$3
  if command -v "$binary" >/dev/null && "$binary" --version 2>/dev/null | grep -qw "$version"; then
    return
  fi
  log "installing $crate $version (a few minutes, once)"
  # --locked builds the tool with the dependency versions its authors tested. When one of
  # them is no longer in the registry (seen: webpki-roots 1.0.11 for wasm-bindgen-cli
  # 0.2.130), fall back to a fresh resolution within the same semver ranges.
  cargo install "$crate" --version "$version" --locked ||
    { log "locked install of $crate failed; retrying with a fresh dependency resolution"
      cargo install "$crate" --version "$version"; }
}

wasm_bindgen_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
[ -n "$wasm_bindgen_version" ] || die "no wasm-bindgen in Cargo.lock"
install_tool wasm-bindgen-cli "$wasm_bindgen_version" wasm-bindgen
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

# --- Headless Chromium for the dashboard's browser test (tests/tests/dashboard.rs). Debian's
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
# machine's Python changes; one venv per version, reused by every clone.
schemathesis_venv="$HOME/.cache/tally/schemathesis-$SCHEMATHESIS_VERSION"
if ! "$schemathesis_venv/bin/st" --version 2>/dev/null | grep -qw "$SCHEMATHESIS_VERSION"; then
  command -v python3 >/dev/null || die "python3 (>= 3.10) is required for schemathesis, the contract test"
  log "installing schemathesis $SCHEMATHESIS_VERSION (PyPI) into $schemathesis_venv"
  rm -rf "$schemathesis_venv"
  python3 -m venv "$schemathesis_venv" ||
    die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
  "$schemathesis_venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
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
