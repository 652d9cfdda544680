//! Calls across the JS <-> Wasm boundary and Durable Object storage calls, as counted by the
//! counting copy of the worker (`bench/crossings/`, answered at `GET /_crossings`).
//!
//! Imports are Wasm -> JS calls (wasm-bindgen glue: Web APIs, `SqlStorage.exec`, promise
//! plumbing), exports are JS -> Wasm calls (the entry points, the `malloc` that passes
//! strings in, the closures that resume futures). The Worker and its objects share one
//! isolate under `wrangler dev`, so a hit's count covers the Worker, the object, and the share
//! of alarms (syncs, refreshes) that fell into the measured window.

use std::collections::BTreeMap;

use serde_json::Value;

/// The storage API calls besides SQL statements (alarms), by import name.
const STORAGE_IMPORTS: [&str; 3] = ["__wbg_setAlarm", "__wbg_getAlarm", "__wbg_deleteAlarm"];

/// One `/_crossings` answer.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Crossings {
    /// Wasm -> JS calls by import name (hash suffix removed).
    pub imports: BTreeMap<String, u64>,
    /// JS -> Wasm calls by export name.
    pub exports: BTreeMap<String, u64>,
    /// SQL statements executed, by text (shortened).
    pub sql: BTreeMap<String, u64>,
}

impl Crossings {
    /// Reads a `/_crossings` answer.
    pub fn from_json(value: &Value) -> Option<Crossings> {
        let map = |name: &str| -> Option<BTreeMap<String, u64>> {
            value
                .get(name)?
                .as_object()?
                .iter()
                .map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .collect()
        };
        Some(Crossings {
            imports: map("imports")?,
            exports: map("exports")?,
            sql: map("sql")?,
        })
    }

    /// Requests the Worker served (calls of its `fetch` entry point).
    pub fn requests(&self) -> u64 {
        self.exports.get("fetch").copied().unwrap_or(0)
    }

    /// All Wasm -> JS calls.
    pub fn wasm_to_js(&self) -> u64 {
        self.imports.values().sum()
    }

    /// All JS -> Wasm calls.
    pub fn js_to_wasm(&self) -> u64 {
        self.exports.values().sum()
    }

    /// SQL statements.
    pub fn sql_calls(&self) -> u64 {
        self.sql.values().sum()
    }

    /// Calls of the storage API: SQL statements and alarm calls.
    pub fn storage_calls(&self) -> u64 {
        self.sql_calls()
            + STORAGE_IMPORTS
                .iter()
                .map(|name| self.imports.get(*name).copied().unwrap_or(0))
                .sum::<u64>()
    }

    /// `n` per request served.
    pub fn per_request(&self, n: u64) -> f64 {
        crate::report::ratio(crate::to_f64(n), crate::to_f64(self.requests()))
    }

    /// One line: crossings and storage calls per request.
    pub fn summary(&self) -> String {
        let alarm = |name: &str| self.per_request(self.imports.get(name).copied().unwrap_or(0));
        format!(
            "{:.1} crossings ({:.1} Wasm->JS, {:.1} JS->Wasm); {:.2} storage calls \
             ({:.2} SQL, {:.2} setAlarm, {:.2} getAlarm); {:.3} alarms",
            self.per_request(self.wasm_to_js() + self.js_to_wasm()),
            self.per_request(self.wasm_to_js()),
            self.per_request(self.js_to_wasm()),
            self.per_request(self.storage_calls()),
            self.per_request(self.sql_calls()),
            alarm("__wbg_setAlarm"),
            alarm("__wbg_getAlarm"),
            self.per_request(self.exports.get("replica_alarm").copied().unwrap_or(0)),
        )
    }

    /// The `top` most frequent imports and exports, and every SQL statement, per request.
    pub fn detail(&self, top: usize) -> Vec<String> {
        let ranked = |map: &BTreeMap<String, u64>| {
            let mut pairs: Vec<(&String, &u64)> = map.iter().collect();
            pairs.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            pairs
                .into_iter()
                .take(top)
                .map(|(name, n)| {
                    let short = name.strip_prefix("__wbg_").unwrap_or(name);
                    format!("{short} {:.2}", self.per_request(*n))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut lines = vec![
            format!("Wasm->JS: {}", ranked(&self.imports)),
            format!("JS->Wasm: {}", ranked(&self.exports)),
        ];
        for (statement, n) in &self.sql {
            lines.push(format!("SQL {:.3}: {statement}", self.per_request(*n)));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_read_and_divided_per_request() {
        let value = serde_json::json!({
            "imports": {"__wbg_exec": 10, "__wbg_setAlarm": 1, "__wbg_set": 30},
            "exports": {"fetch": 10, "replica_fetch": 10, "__wbindgen_malloc": 20},
            "sql": {"INSERT INTO counters": 10}
        });
        let c = Crossings::from_json(&value).expect("parses");
        assert_eq!(c.requests(), 10);
        assert_eq!(c.wasm_to_js(), 41);
        assert_eq!(c.js_to_wasm(), 40);
        assert_eq!(c.storage_calls(), 11);
        assert!((c.per_request(c.wasm_to_js() + c.js_to_wasm()) - 8.1).abs() < 1e-9);
        assert!(
            c.summary()
                .starts_with("8.1 crossings (4.1 Wasm->JS, 4.0 JS->Wasm); 1.10 storage calls")
        );
        let detail = c.detail(2);
        assert_eq!(detail[0], "Wasm->JS: set 3.00, exec 1.00");
        assert_eq!(detail[2], "SQL 1.000: INSERT INTO counters");
    }

    #[test]
    fn a_malformed_answer_is_refused() {
        assert_eq!(
            Crossings::from_json(&serde_json::json!({"imports": {}})),
            None
        );
        let bad = serde_json::json!({"imports": {"a": "x"}, "exports": {}, "sql": {}});
        assert_eq!(Crossings::from_json(&bad), None);
    }
}
