// The client's wire types (dist/wire.d.ts, as the package ships them) against the edge's
// OpenAPI document (docs/edge-openapi.json): for every schema the client reads, the same
// property names, the same required ones, and the same JSON types; and every schema of the
// document is either read by the client or listed below as not. A change of the document
// fails here until the types (and the client) follow it.
//
//   TALLY_ROOT   the repository (for docs/edge-openapi.json and the pinned typescript)

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

const root = process.env.TALLY_ROOT;
assert.ok(root, "TALLY_ROOT (the repository) is not set");
const ts = createRequire(join(root, "package.json"))("typescript");
const doc = JSON.parse(readFileSync(join(root, "docs/edge-openapi.json"), "utf8"));
const schemas = doc.components.schemas;
const pkg = dirname(createRequire(import.meta.url).resolve("tally-client/package.json"));

// Each object schema of the document (by name, or by its place inside one) and the type of
// dist/wire.d.ts that holds it.
const OBJECTS = {
  CountBody: "CountBody",
  "CountBody.milestone": "WireMilestone",
  ErrorBody: "ErrorBody",
  ErrorResponse: "ErrorResponse",
  "BatchItem[0]": "BatchCount",
  "BatchItem[1]": "BatchError",
  BatchBody: "BatchBody",
  PresenceBody: "PresenceBody",
  UniqueBody: "UniqueBody",
};
// Schemas that are not objects: their JSON types are compared where they are used.
const SCALARS = ["CounterId", "Count", "Timestamp", "SessionId", "BatchItem"];
// Schemas of the document the client does not read (none today).
const UNUSED = [];

/** The JSON types a schema admits: "number", "string", "null", "object:<wire type>", "array<…>". */
function jsonTypes(schema, where) {
  if (schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return jsonTypes(schemas[name], name);
  }
  const alternatives = schema.oneOf ?? schema.anyOf;
  if (alternatives) {
    return new Set(alternatives.flatMap((s, i) => [...jsonTypes(s, s.$ref ? where : `${where}[${i}]`)]));
  }
  const types = Array.isArray(schema.type) ? schema.type : [schema.type];
  const out = new Set();
  for (const type of types) {
    if (type === "integer" || type === "number") out.add("number");
    else if (type === "string" || type === "null" || type === "boolean") out.add(type);
    else if (type === "array") out.add(`array<${[...jsonTypes(schema.items, `${where}[]`)].sort().join("|")}>`);
    else if (type === "object") {
      assert.ok(OBJECTS[where], `the document has an object schema at ${where} that no wire type holds`);
      out.add(`object:${OBJECTS[where]}`);
    } else assert.fail(`${where}: a schema without a type the test knows (${JSON.stringify(schema)})`);
  }
  return out;
}

const program = ts.createProgram([join(pkg, "dist/wire.d.ts")], { strict: true, noEmit: true });
const checker = program.getTypeChecker();
const source = program.getSourceFile(join(pkg, "dist/wire.d.ts"));
assert.ok(source, "the package ships dist/wire.d.ts");
const declared = new Map();
for (const statement of source.statements) {
  if (ts.isInterfaceDeclaration(statement) || ts.isTypeAliasDeclaration(statement)) {
    declared.set(statement.name.text, checker.getTypeAtLocation(statement.name));
  }
}

/** The JSON types a TypeScript type admits, named as jsonTypes names them. */
function tsTypes(type) {
  const members = type.isUnion() ? type.types : [type];
  const out = new Set();
  for (const t of members) {
    const f = t.flags;
    if (f & ts.TypeFlags.Undefined) continue;
    if (f & ts.TypeFlags.NumberLike) out.add("number");
    else if (f & ts.TypeFlags.StringLike) out.add("string");
    else if (f & ts.TypeFlags.Null) out.add("null");
    else if (f & ts.TypeFlags.BooleanLike) out.add("boolean");
    else if (checker.isArrayType(t)) {
      const [item] = checker.getTypeArguments(t);
      out.add(`array<${[...tsTypes(item)].sort().join("|")}>`);
    } else {
      const name = (t.aliasSymbol ?? t.getSymbol())?.getName();
      out.add(`object:${name}`);
    }
  }
  return out;
}

/** The properties of the object schema at `where` (a path into the document). */
function objectSchema(where) {
  const [, name, rest] = where.match(/^([A-Za-z]+)(.*)$/);
  let schema = schemas[name];
  for (const step of rest.match(/\.[a-z_]+|\[\d+\]/g) ?? []) {
    schema = step.startsWith(".") ? schema.properties[step.slice(1)] : (schema.oneOf ?? schema.anyOf)[Number(step.slice(1, -1))];
  }
  return schema;
}

test("every schema of the edge's OpenAPI document is held by a wire type, or listed as unused", () => {
  const held = new Set([...Object.keys(OBJECTS).map((w) => w.match(/^[A-Za-z]+/)[0]), ...SCALARS, ...UNUSED]);
  const missing = Object.keys(schemas).filter((name) => !held.has(name));
  assert.deepEqual(missing, [], `schemas of docs/edge-openapi.json the client has no type for: ${missing.join(", ")}`);
  for (const type of Object.values(OBJECTS)) assert.ok(declared.has(type), `dist/wire.d.ts declares ${type}`);
});

for (const [where, name] of Object.entries(OBJECTS)) {
  test(`${name} has the properties, required ones and JSON types of ${where}`, () => {
    const schema = objectSchema(where);
    assert.equal(schema.type, "object", `${where} is an object schema`);
    const type = declared.get(name);
    const props = new Map(checker.getPropertiesOfType(type).map((p) => [p.getName(), p]));
    const documented = Object.keys(schema.properties ?? {}).sort();
    assert.deepEqual([...props.keys()].sort(), documented, `${name}'s properties are ${where}'s`);
    const required = new Set(schema.required ?? []);
    for (const [key, sub] of Object.entries(schema.properties ?? {})) {
      const prop = props.get(key);
      const optional = (prop.flags & ts.SymbolFlags.Optional) !== 0;
      assert.equal(optional, !required.has(key), `${name}.${key} is ${required.has(key) ? "required" : "optional"} in ${where}`);
      const want = [...jsonTypes(sub, `${where}.${key}`)].sort();
      const have = [...tsTypes(checker.getTypeOfSymbol(prop))].sort();
      assert.deepEqual(have, want, `${name}.${key}: the JSON types of ${where}.${key}`);
    }
  });
}

test("BatchItem is the union of the two forms the document gives it", () => {
  const want = [...jsonTypes({ $ref: "#/components/schemas/BatchItem" }, "BatchItem")].sort();
  assert.deepEqual([...tsTypes(declared.get("BatchItem"))].sort(), want);
  assert.deepEqual([...tsTypes(declared.get("WireCount"))].sort(), [...jsonTypes(schemas.Count, "Count")].sort());
});
