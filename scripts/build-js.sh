#!/usr/bin/env bash
# Builds the npm package `tally-crdt`: the crate's wasm-bindgen bindings (shared/src/wasm.rs,
# feature `wasm`) for JavaScript, into <cargo target dir>/js/tally-crdt/ (target/js/tally-crdt/
# unless CARGO_TARGET_DIR says otherwise; never committed). Prints that folder on stdout, the
# progress on stderr. scripts/test-js.sh packs, installs and tests what it makes.
#
#   node/      wasm-bindgen --target nodejs: CommonJS that reads the .wasm with fs at require
#              time, no init call. Node loads it for `require` and for `import` alike (Node
#              finds the named exports of CommonJS), so one process has one copy of the
#              classes and a counter from either can merge with the other. (An ESM build for
#              Node, experimental-nodejs-module, would be a second copy with its own memory.)
#   bundler/   wasm-bindgen --target bundler: ESM that imports the .wasm as a module
#              (webpack 5 asyncWebAssembly, Vite with vite-plugin-wasm, ...).
#   package.json, README.md   from js/tally-crdt/; `exports` sends Node to node/ and everything
#              else to bundler/. Version and license come from the workspace (Cargo.toml).
#
# Needs the wasm32 target and wasm-bindgen at Cargo.lock's version (scripts/bootstrap.sh
# installs both); uses node_modules/.bin/wasm-opt (binaryen, installed by `npm ci`) when present.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '[build-js] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The workspace's word on where builds go (CARGO_TARGET_DIR, else target/) and on the
# crate's version and license (both inherited from [workspace.package]).
meta=$(cargo metadata --no-deps --format-version 1 --locked | node -e '
  const m = JSON.parse(require("fs").readFileSync(0, "utf8"));
  const p = m.packages.find((p) => p.name === "tally-crdt");
  if (!p || !p.version || !p.license) process.exit(1);
  console.log([m.target_directory, p.version, p.license].join("\n"));
') || die "cargo metadata names no tally-crdt with a version and a license"
{ read -r target_dir; read -r version; read -r license; } <<< "$meta"

want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }') || true
[ "$have" = "$want" ] ||
  die "wasm-bindgen ${have:-is missing}; Cargo.lock needs $want (scripts/bootstrap.sh installs it)"

# The crate is an rlib for its Rust users; the .wasm needs a cdylib, asked for here only.
# The edge worker's release settings (scripts/build-edge.sh): the smallest code (150 KB of
# .wasm becomes 95 KB), and the dependencies they share are built once for both.
log "building tally-crdt $version for wasm32 (release, feature wasm)"
export CARGO_PROFILE_RELEASE_OPT_LEVEL=z CARGO_PROFILE_RELEASE_LTO=true CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
cargo rustc -p tally-crdt --lib --crate-type cdylib --target wasm32-unknown-unknown \
  --release --features wasm --locked --quiet
wasm=$target_dir/wasm32-unknown-unknown/release/tally_crdt.wasm
[ -f "$wasm" ] || die "cargo left no $wasm"

# Build beside the result and swap it in at the end: never a half-made package in its place.
out=$target_dir/js/tally-crdt
stage=$target_dir/js/.tally-crdt.partial
rm -rf "$stage"
mkdir -p "$stage"

log "wasm-bindgen $have: node/ (--target nodejs), bundler/ (--target bundler)"
wasm-bindgen --target nodejs --out-dir "$stage/node" "$wasm"
wasm-bindgen --target bundler --out-dir "$stage/bundler" "$wasm"
# The bundler files are ES modules; say so to Node and to bundlers that ask.
printf '{\n  "type": "module"\n}\n' > "$stage/bundler/package.json"

wasm_opt=node_modules/.bin/wasm-opt
if [ -x "$wasm_opt" ]; then
  # Both targets carry the same .wasm (only the JS glue differs): optimise once, copy.
  log "wasm-opt -O ($("$wasm_opt" --version))"
  "$wasm_opt" -O "$stage/node/tally_crdt_bg.wasm" -o "$stage/node/tally_crdt_bg.opt.wasm"
  if cmp -s "$stage/node/tally_crdt_bg.wasm" "$stage/bundler/tally_crdt_bg.wasm"; then
    cp "$stage/node/tally_crdt_bg.opt.wasm" "$stage/bundler/tally_crdt_bg.wasm"
  else
    "$wasm_opt" -O "$stage/bundler/tally_crdt_bg.wasm" -o "$stage/bundler/tally_crdt_bg.wasm"
  fi
  mv "$stage/node/tally_crdt_bg.opt.wasm" "$stage/node/tally_crdt_bg.wasm"
else
  log "no $wasm_opt (npm ci installs it): the .wasm stays unoptimised"
fi

# The templates with the workspace's version and license: package.json gets both after the
# name, README.md its license for @LICENSE@.
node -e '
  const fs = require("fs");
  const { join } = require("path");
  const [src, dst, version, license] = process.argv.slice(1);
  const { name, ...rest } = JSON.parse(fs.readFileSync(join(src, "package.json"), "utf8"));
  const pkg = { name, version, license, ...rest };
  fs.writeFileSync(join(dst, "package.json"), JSON.stringify(pkg, null, 2) + "\n");
  const readme = fs.readFileSync(join(src, "README.md"), "utf8");
  fs.writeFileSync(join(dst, "README.md"), readme.replaceAll("@LICENSE@", license));
' js/tally-crdt "$stage" "$version" "$license"

rm -rf "$out"
mv "$stage" "$out"
log "built $out ($(du -sh "$out" | cut -f1))"
printf '%s\n' "$out"
