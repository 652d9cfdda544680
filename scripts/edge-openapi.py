"""Writes the OpenAPI 3.1 document of the edge's public routes to stdout; the checked-in copy
is docs/edge-openapi.json:

    python3 scripts/edge-openapi.py > docs/edge-openapi.json

The worker is Rust compiled to Wasm, without an OpenAPI generator (it would grow the module),
so the document is written here, from the rules in edge/src/api.rs, session.rs and lib.rs.
tests/tests/contract.rs checks that the checked-in copy is this script's output, and runs
schemathesis with it against the real worker under wrangler dev: a route, status, header or
body rule the document gets wrong fails there. Change the document with the code it describes.
"""
import json
ID = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]*$",
      "description": "A counter id: 1-128 of A-Z a-z 0-9 - _ . : starting with a letter or digit.", "examples": ["home"]}
ID_RE = "[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"
HALF = "[0-9]{1,38}"  # session::HALF_DIGITS
EPOCH = "[0-9]{1,19}"  # session::EPOCH_DIGITS
ENTRY = f"(g|pn):{ID_RE}={HALF}(-{HALF})?(@{EPOCH})?"
SP = "[ \\t]*"
doc = {
 "openapi": "3.1.0",
 "info": {
  "title": "tally edge",
  "version": "2",
  "description": "The public API of tally's edge worker (Cloudflare Workers, one Durable Object per replica). "
   "`/{id}/counter` is increment-only (a G-Counter), `/{id}/gauge` goes up and down (a PN-Counter); the same id in each is a different counter. "
   "Writes answer from the replica's own state and never wait for the merger; reads answer from caches and never write. "
   "Counts are JSON integers below 2^53 in magnitude and decimal strings beyond; times are RFC 3339 UTC with milliseconds. "
   "Every error is `{\"error\": {\"code\", \"message\"}}`. Every answer carries CORS headers for any origin (`OPTIONS` preflights answer 204). "
   "Send back the `Tally-Session` header of each answer on your next request: your reads then never answer less than you have seen (read-your-writes, monotonic reads). "
   "This document is checked in (docs/edge-openapi.json) and tested against the real worker under `wrangler dev` by schemathesis (tests/tests/contract.rs).",
  "license": {"name": "MIT OR Apache-2.0", "identifier": "MIT OR Apache-2.0"},
 },
 "servers": [{"url": "http://127.0.0.1:8787", "description": "`scripts/run.sh` (wrangler dev)"}],
 "tags": [{"name": "counters", "description": "Increment-only counters"}, {"name": "gauges", "description": "Counts that go up and down"}],
 "paths": {},
 "components": {
  "securitySchemes": {"write_key": {"type": "http", "scheme": "bearer",
    "description": "The application's write key (`WRITE_KEY` secret), for its own backend: deltas above `PUBLIC_MAX_DELTA` (default 1) and gauge writes (unless `PUBLIC_GAUGES`). Compared in constant time. A key presented and wrong is 401 `invalid_write_key` whatever the delta."}},
  "schemas": {
   "CounterId": ID,
   "Count": {"description": "A count: a JSON integer when |count| < 2^53, a decimal string beyond.",
     "oneOf": [{"type": "integer", "minimum": -9007199254740991, "maximum": 9007199254740991},
               {"type": "string", "pattern": "^-?[0-9]+$"}], "examples": [715]},
   "Timestamp": {"type": "string", "format": "date-time", "description": "RFC 3339 UTC with exactly three fractional digits.", "examples": ["2030-10-10T12:11:42.000Z"]},
   "CountBody": {"type": "object", "required": ["count", "updated_at"], "additionalProperties": False,
     "properties": {"count": {"$ref": "#/components/schemas/Count"},
                    "updated_at": {"description": "The newest change known; null for a counter nobody has hit.",
                                   "oneOf": [{"$ref": "#/components/schemas/Timestamp"}, {"type": "null"}]}},
     "examples": [{"count": 715, "updated_at": "2030-10-10T12:11:42.000Z"}]},
   "ErrorBody": {"type": "object", "required": ["code", "message"], "additionalProperties": False,
     "properties": {"code": {"type": "string", "description": "Stable, machine-readable (docs/protocol.md lists them)."},
                    "message": {"type": "string", "description": "For people."}}},
   "ErrorResponse": {"type": "object", "required": ["error"], "additionalProperties": False,
     "properties": {"error": {"$ref": "#/components/schemas/ErrorBody"}}},
   "BatchItem": {"oneOf": [
      {"type": "object", "required": ["id", "count", "updated_at"], "additionalProperties": False,
       "properties": {"id": {"$ref": "#/components/schemas/CounterId"}, "count": {"$ref": "#/components/schemas/Count"},
                      "updated_at": {"oneOf": [{"$ref": "#/components/schemas/Timestamp"}, {"type": "null"}]}}},
      {"type": "object", "required": ["id", "error"], "additionalProperties": False,
       "description": "This id alone could not be read (e.g. `merger_unreachable`); the others are answered.",
       "properties": {"id": {"$ref": "#/components/schemas/CounterId"}, "error": {"$ref": "#/components/schemas/ErrorBody"}}}]},
   "BatchBody": {"type": "object", "required": ["items"], "additionalProperties": False,
     "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/BatchItem"}, "description": "One per id asked, in the order asked."}}},
  },
  "parameters": {
   "id": {"name": "id", "in": "path", "required": True, "description": "The counter's id.", "schema": {"$ref": "#/components/schemas/CounterId"}},
   "session": {"name": "Tally-Session", "in": "header", "required": False,
     "description": "The `Tally-Session` header of your previous answer, sent back as received: comma-separated entries `<kind>:<id>=<p>[-<n>][@<epoch>]`, each counter once, at most 32 entries and 8192 bytes, each half at most 38 digits and each epoch at most 19. Empty is no session. It names counters and counts, nothing secret; a forged one only changes what its sender is shown.",
     "schema": {"type": "string", "maxLength": 8192, "pattern": f"^({SP}{ENTRY}{SP}(,{SP}{ENTRY}{SP}){{0,31}})?$", "examples": ["g:home=715,pn:viewers=90-75@2"]}},
   "region": {"name": "X-Tally-Region", "in": "header", "required": False,
     "description": "Only with `ALLOW_REGION_OVERRIDE` (wrangler dev and tests): the region to count in, instead of the continent Cloudflare reports. Ignored otherwise.",
     "schema": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9_-]+$"}},
   "ids": {"name": "ids", "in": "query", "required": True, "style": "form", "explode": False,
     "description": "1 to 100 ids, comma-separated, each once (plain or percent-encoded commas, as URLSearchParams writes them).",
     "schema": {"type": "string", "pattern": f"^{ID_RE}(,{ID_RE}){{0,99}}$", "examples": ["home,pricing,docs"]}},
  },
  "headers": {
   "Tally-Session": {"description": "What this client has now seen: send it back on the next request.", "schema": {"type": "string"}},
   "Age": {"description": "Seconds since the global part of the count was heard from the merger, when older than `READ_TTL_MS` (the merger is away or slow).", "schema": {"type": "string", "pattern": "^[0-9]+$"}},
   "Tally-Estimate": {"description": "`partial`: no global value was heard yet; the count is what this replica and the session know.", "schema": {"type": "string", "enum": ["partial"]}},
   "Tally-Cache": {"description": "Reads: `hit` when this isolate's cache answered, `miss` when a Durable Object did.", "schema": {"type": "string", "enum": ["hit", "miss"]}},
   "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string", "pattern": "^[0-9]+$"}},
  },
 },
}
err = lambda d, headers=None: ({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}} | ({"headers": headers} if headers else {}))
count_headers = {h: {"$ref": f"#/components/headers/{h}"} for h in ["Tally-Session", "Age", "Tally-Estimate"]}
bad_request = "`empty_id`, `id_too_long`, `id_bad_char` (the id), `invalid_region` (X-Tally-Region), `invalid_session` (Tally-Session)"
common = [{"$ref": "#/components/parameters/session"}, {"$ref": "#/components/parameters/region"}]
preflight = lambda tag: {"tags": [tag], "summary": "CORS preflight", "operationId": None,
  "responses": {"204": {"description": "Allowed: GET, PUT, OPTIONS from any origin, with Content-Type, Authorization, Tally-Session"}}}
for path, tag, kind in [("/{id}/counter", "counters", "counter"), ("/{id}/gauge", "gauges", "gauge")]:
    counter = kind == "counter"
    delta = ({"type": "integer", "minimum": 1, "maximum": 1000000,
              "description": "What to add: 1 to 1,000,000. Above `PUBLIC_MAX_DELTA` (default 1) it needs the write key."}
             if counter else
             {"type": "integer", "minimum": -1000000, "maximum": 1000000, "not": {"const": 0},
              "description": "What to add: -1,000,000 to 1,000,000, not 0. Needs the write key unless `PUBLIC_GAUGES`."})
    doc["paths"][path] = {
     "parameters": [{"$ref": "#/components/parameters/id"}],
     "get": {"tags": [tag], "operationId": f"read_{kind}", "summary": f"Read a {kind}",
       "description": "The global count as this replica knows it (`global - recorded_own + current_own`), at least what the session token says this client has seen. Writes nothing; a stale value is refreshed in the background. An id nobody has hit answers `{\"count\": 0, \"updated_at\": null}`.",
       "parameters": common,
       "responses": {
        "200": {"description": "The count", "headers": count_headers | {"Tally-Cache": {"$ref": "#/components/headers/Tally-Cache"}},
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CountBody"}}}},
        "400": err(bad_request),
        "503": err("`merger_unreachable`: this replica has never heard a global value of this counter and the merger cannot be reached"),
       }},
     "put": {"tags": [tag], "operationId": f"hit_{kind}", "summary": ("Count a hit" if counter else "Move a gauge"),
       "description": ("Adds to this replica's slot, stored before the answer; never waits for the merger. No body adds 1. "
                       if counter else "Adds `delta` (negative to go down) to this replica's slot, stored before the answer; never waits for the merger. No body adds 1. ")
                      + "The answer is the count after the hit, at least what the session token says this client has seen.",
       "parameters": common,
       "security": [{}, {"write_key": []}],
       "requestBody": {"required": False, "content": {"application/json": {"schema": {
           "type": "object", "required": ["delta"], "additionalProperties": False, "properties": {"delta": delta}},
           "examples": {"one": {"value": {"delta": 1}}}}}},
       "responses": {
        "200": {"description": "Counted", "headers": count_headers, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CountBody"}}}},
        "400": err(bad_request + ", `invalid_body` (not `{\"delta\": <integer>}`)"),
        "401": err("`write_key_required`: " + ("a delta above `PUBLIC_MAX_DELTA` without the write key" if counter else "a gauge write without the write key (and without `PUBLIC_GAUGES`)") + "; `invalid_write_key`: a key that is not the application's"),
        "413": err("`body_too_large`: a body over 1024 bytes"),
        "415": err("`unsupported_media_type`: a body declared as something other than application/json"),
        "422": err(("`invalid_delta`: a delta below 1 or above 1,000,000" if counter else "`invalid_delta`: a delta of 0 or beyond ±1,000,000") + "; `slot_overflow`: the hit would take this replica's slot past 2^64 - 1 (nothing was counted)"),
        "429": err("`too_many_new_ids`: this client used up its budget of new counter ids for the minute; ids already counted still count", {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}),
       }},
     "options": {"tags": [tag], "operationId": f"preflight_{kind}", "summary": "CORS preflight",
       "description": "Answered before the path is read, whatever the id: the request it precedes gets the error, with CORS headers a browser lets the page read.",
       "parameters": [{"name": "id", "in": "path", "required": True, "description": "Anything.", "schema": {"type": "string"}}],
       "responses": {"204": {"description": "Allowed: GET, PUT and OPTIONS from any origin, with the headers Content-Type, Authorization and Tally-Session"}}},
    }
for path, tag, kind in [("/counter", "counters", "counters"), ("/gauge", "gauges", "gauges")]:
    doc["paths"][path] = {"get": {"tags": [tag], "operationId": f"read_{kind}", "summary": f"Read several {kind} at once",
      "description": "For a page with many like buttons: up to 100 ids in one request, each answered as a single read would be (one internal read per Durable Object that serves some of them, all at once). Writes nothing.",
      "parameters": [{"$ref": "#/components/parameters/ids"}] + common,
      "responses": {
        "200": {"description": "One item per id", "headers": {"Tally-Session": {"$ref": "#/components/headers/Tally-Session"}},
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchBody"}}}},
        "400": err("`invalid_query` (not `ids=<id>,<id>,…`, an id named twice, more than 100 ids), " + bad_request),
      }}}
print(json.dumps(doc, indent=2, ensure_ascii=False))
