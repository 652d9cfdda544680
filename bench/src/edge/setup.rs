//! The workers the edge benchmark serves, laid out in its temp dir.
//!
//! The repository's `wrangler.toml` has a `[build]` step that rewrites `edge/build/` on every
//! `wrangler dev` start; a benchmark must neither trigger it (it may run beside tests that
//! start their own `wrangler dev`) nor measure a worker that changes under it. So the built
//! worker is copied once into the temp dir, and each worker gets a generated `wrangler.toml`:
//! the repository's, without `[build]`, with `main` pointing at the copy. Bindings,
//! migrations, rate limits and vars stay as deployed.
//!
//! - `tally/`: the worker as built.
//! - `counting/`: the same build behind `bench/crossings/entry.mjs`, which counts JS <-> Wasm
//!   calls and storage calls (never used for throughput).
//! - `js/`: the frozen JavaScript Durable Object baseline (`bench/js-counter`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tally_e2e::{copy_dir, without_build};

use crate::Error;

/// The crossing counter and its entry module (`bench/crossings/`).
const COUNT_MJS: &str = include_str!("../../crossings/count.mjs");
const ENTRY_MJS: &str = include_str!("../../crossings/entry.mjs");

/// The `wrangler.toml` of each worker the benchmark serves, and the deployed settings.
#[derive(Debug)]
pub struct Workers {
    /// The tally worker as built.
    pub tally: PathBuf,
    /// The tally worker with the crossing counter.
    pub counting: PathBuf,
    /// The JavaScript baseline.
    pub js: PathBuf,
    /// `[vars]` of the repository's `wrangler.toml`: the deployed defaults.
    pub vars: BTreeMap<String, String>,
    /// Size of the Wasm module, bytes.
    pub wasm_bytes: u64,
}

/// Copies the built worker (`build`: what `scripts/build-edge.sh` writes) and the JavaScript
/// baseline under `dir`, and writes their configs (the harness's `without_build`).
pub fn prepare(root: &Path, build: &Path, dir: &Path) -> Result<Workers, Error> {
    let shim = build.join("worker/shim.mjs");
    if !shim.is_file() {
        return Err(format!(
            "{} is missing: build the worker first (bash scripts/build-edge.sh)",
            shim.display()
        )
        .into());
    }
    let repo_config = std::fs::read_to_string(root.join("wrangler.toml"))
        .map_err(|e| format!("reading wrangler.toml: {e}"))?;

    let tally = dir.join("tally");
    copy_dir(build, &tally.join("build"))
        .map_err(|e| format!("copying {}: {e}", build.display()))?;
    let config = tally.join("wrangler.toml");
    std::fs::write(
        &config,
        without_build(&repo_config, "build/worker/shim.mjs"),
    )?;

    let counting = dir.join("counting");
    copy_dir(build, &counting.join("build"))
        .map_err(|e| format!("copying {}: {e}", build.display()))?;
    std::fs::write(counting.join("count.mjs"), COUNT_MJS)?;
    std::fs::write(counting.join("entry.mjs"), ENTRY_MJS)?;
    let counting_config = counting.join("wrangler.toml");
    std::fs::write(&counting_config, without_build(&repo_config, "entry.mjs"))?;

    let js = dir.join("js");
    copy_dir(&root.join("bench/js-counter"), &js)
        .map_err(|e| format!("copying bench/js-counter: {e}"))?;

    let wasm_bytes = std::fs::metadata(build.join("index_bg.wasm"))
        .map_err(|e| format!("the built worker has no index_bg.wasm: {e}"))?
        .len();
    Ok(Workers {
        tally: config,
        counting: counting_config,
        js: js.join("wrangler.toml"),
        vars: vars(&repo_config),
        wasm_bytes,
    })
}

/// The `NAME = "value"` entries of the `[vars]` section of a `wrangler.toml`.
pub fn vars(config: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    let mut in_vars = false;
    for line in config.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_vars = trimmed == "[vars]";
            continue;
        }
        if !in_vars || trimmed.starts_with('#') {
            continue;
        }
        if let Some((name, value)) = trimmed.split_once('=') {
            vars.insert(
                name.trim().to_owned(),
                value.trim().trim_matches('"').to_owned(),
            );
        }
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPO_CONFIG: &str = include_str!("../../../wrangler.toml");

    // The config generation is the harness's (`tally_e2e::without_build`, tested there);
    // this pins what the benchmark relies on: the deployed vars survive it.
    #[test]
    fn the_generated_config_keeps_the_deployed_vars() {
        let config = without_build(REPO_CONFIG, "build/worker/shim.mjs");
        assert_eq!(vars(&config), vars(REPO_CONFIG));
    }

    #[test]
    fn vars_are_read_from_the_vars_section_only() {
        let config = "name = \"x\"\n[build]\ncommand = \"b\"\n[vars]\n# a comment\nA = \"1\"\nB=\"two\"\n[[migrations]]\ntag = \"v1\"\n";
        let found = vars(config);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found["A"], "1");
        assert_eq!(found["B"], "two");
        assert!(vars(REPO_CONFIG).contains_key("PARTITIONS"));
    }
}
