// Counts the calls across the JS <-> Wasm boundary of the tally worker, for `tally-bench edge`
// (docs/benchmarks.md, "crossings per hit"). Never deployed: the benchmark serves a copy of
// the built worker with this module evaluated first (entry.mjs), so the worker's code is the
// one measured, unchanged.
//
// wasm-bindgen's glue instantiates the module with `new WebAssembly.Instance(module, imports)`;
// wrapping that constructor sees every import (a Wasm -> JS call) and every export (a JS ->
// Wasm call) without editing the generated glue. Durable Object SQL statements are counted by
// text, through a proxy around the `SqlStorage` object the glue hands to Wasm.

export const counts = { imports: new Map(), exports: new Map(), sql: new Map() };

function bump(map, key) {
  map.set(key, (map.get(key) ?? 0) + 1);
}

// `__wbg_exec_85b624bc72d8a6f2` -> `__wbg_exec`: the hash changes with every build.
const shortName = (name) => name.replace(/_[0-9a-f]{16}$/, "");

function countingSql(sql) {
  return new Proxy(sql, {
    get(target, prop) {
      const value = Reflect.get(target, prop);
      if (prop === "exec") {
        return (query, ...bindings) => {
          bump(counts.sql, query.replace(/\s+/g, " ").trim().slice(0, 80));
          return value.call(target, query, ...bindings);
        };
      }
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

const Instance = WebAssembly.Instance;
WebAssembly.Instance = function (module, imports) {
  const wrapped = {};
  for (const [namespace, entries] of Object.entries(imports)) {
    wrapped[namespace] = {};
    for (const [name, f] of Object.entries(entries)) {
      if (typeof f !== "function") {
        wrapped[namespace][name] = f;
        continue;
      }
      const key = shortName(name);
      wrapped[namespace][name] = key.startsWith("__wbg_sql")
        ? function (...args) {
            bump(counts.imports, key);
            return countingSql(f.apply(this, args));
          }
        : function (...args) {
            bump(counts.imports, key);
            return f.apply(this, args);
          };
    }
  }
  const instance = new Instance(module, wrapped);
  const exports = {};
  for (const [name, value] of Object.entries(instance.exports)) {
    exports[name] =
      typeof value === "function"
        ? function (...args) {
            bump(counts.exports, name);
            return value.apply(this, args);
          }
        : value;
  }
  return { exports };
};
