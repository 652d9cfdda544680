"""Writes the OpenAPI 3.1 document of the edge's public routes to stdout; the checked-in copy
is docs/edge-openapi.json:

    python3 scripts/edge-openapi.py > docs/edge-openapi.json

The worker is Rust compiled to Wasm, without an OpenAPI generator (it would grow the module),
so the document is written here, from the rules in edge/src/api.rs, session.rs and lib.rs.
tests/tests/e2e/contract.rs checks that the checked-in copy is this script's output, and runs
schemathesis with it against the real worker under wrangler dev: a route, status, header or
body rule the document gets wrong fails there. Change the document with the code it describes.
"""
import json
ID = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]*$",
      "description": "A counter id: 1-128 of A-Z a-z 0-9 - _ . : starting with a letter or digit.", "examples": ["home"]}
ID_RE = "[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"
doc = {
 "openapi": "3.1.0",
 "info": {
  "title": "tally edge",
  "version": "2",
  "description": "The public API of tally's edge worker (Cloudflare Workers, one Durable Object per replica). "
   "`/{id}/counter` is increment-only (a G-Counter), `/{id}/gauge` goes up and down (a PN-Counter); the same id in each is a different counter. "
   "Writes answer from the replica's own state and never wait for the merger; reads answer from caches and never write. "
   "Counts are JSON integers below 2^53 in magnitude and decimal strings beyond; times are RFC 3339 UTC with milliseconds. "
   "Every error is `{\"error\": {\"code\", \"message\"}}`. Every answer carries CORS headers for the origins `ALLOWED_ORIGINS` allows (any, by default; `OPTIONS` preflights answer 204); with a list, a request from another origin is refused with 403 `origin_not_allowed`. "
   "Send back the `Tally-Session` header of each answer on your next request: your reads then never answer less than you have seen (read-your-writes, monotonic reads). "
   "This document is checked in (docs/edge-openapi.json) and tested against the real worker under `wrangler dev` by schemathesis (tests/tests/e2e/contract.rs).",
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
                                   "oneOf": [{"$ref": "#/components/schemas/Timestamp"}, {"type": "null"}]},
                    "milestone": {"description": "A counter hit on the exact path that won a milestone (`Tally-Milestone: won`): this hit was the N-th. Absent otherwise.",
                                  "type": "object", "required": ["n", "label"], "additionalProperties": False,
                                  "properties": {"n": {"$ref": "#/components/schemas/Count"},
                                                 "label": {"oneOf": [{"type": "string"}, {"type": "null"}]}}}},
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
     "description": "The `Tally-Session` header of your previous answer, sent back as received: `1.<key id>.<mac>.<written>;<read>`, where each list is comma-separated entries `<kind>:<id>=<p>[-<n>][@<epoch>]` (up to 32 counters this client wrote, then up to 32 it read), signed with the edge's `SESSION_KEY` (docs/protocol.md, session tokens); at most 8192 bytes. Any other value (empty, forged, edited, signed with a retired key) is no session: the request is answered as if it carried none.",
     "schema": {"type": "string", "examples": ["1.3f2a91c0.kq0cF3lJ9vXh2Ww8Yb1eRA.g:home=715;pn:viewers=90-75@2"]}},
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
   "Tally-Milestone": {"description": "A counter hit near a milestone took the exact path (synced before the answer): `won` (the body names the milestone), `lost` (committed, and it won nothing: final), or `pending` (the merger did not commit it within `EXACT_WAIT_MS`: its receipt tells later). Absent off the exact path (docs/milestones.md).", "schema": {"type": "string", "enum": ["won", "lost", "pending"]}},
   "Tally-Receipt": {"description": "Names this hit (its units of the replica's slot, signed): look it up at the merger, `GET /v1/counters/{id}/receipts/{receipt}`, to learn whether it won a milestone (docs/milestones.md).", "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{50}$"}},
  },
 },
}
err = lambda d, headers=None: ({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}} | ({"headers": headers} if headers else {}))
count_headers = {h: {"$ref": f"#/components/headers/{h}"} for h in ["Tally-Session", "Age", "Tally-Estimate"]}
bad_request = "`empty_id`, `id_too_long`, `id_bad_char` (the id), `invalid_region` (X-Tally-Region)"
common = [{"$ref": "#/components/parameters/session"}, {"$ref": "#/components/parameters/region"}]
preflight = lambda tag: {"tags": [tag], "summary": "CORS preflight", "operationId": None,
  "responses": {"204": {"description": "Allowed: GET, PUT, DELETE, OPTIONS from any origin, with Content-Type, Authorization, Tally-Session"}}}
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
       "description": ("Adds to this replica's slot, stored before the answer; never waits for the merger, except near a milestone, where it waits for one merger commit to say whether it won (`Tally-Milestone`). No body adds 1. "
                       if counter else "Adds `delta` (negative to go down) to this replica's slot, stored before the answer; never waits for the merger. No body adds 1. ")
                      + "The answer is the count after the hit, at least what the session token says this client has seen.",
       "parameters": common,
       "security": [{}, {"write_key": []}],
       "requestBody": {"required": False, "content": {"application/json": {"schema": (
           {"type": "object", "minProperties": 1, "additionalProperties": False, "properties": {"delta": delta,
             "visitor": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[ -~]{1,64}$",
                         "description": "An opaque key of the client's (printable ASCII): kept with the hit if it wins a milestone while its counter is near one. With it, `delta` defaults to 1."}}}
           if counter else
           {"type": "object", "required": ["delta"], "additionalProperties": False, "properties": {"delta": delta}}),
           "examples": {"one": {"value": {"delta": 1}}} | ({"visitor": {"value": {"visitor": "user-42"}}} if counter else {})}}},
       "responses": {
        "200": {"description": "Counted", "headers": count_headers | ({"Tally-Receipt": {"$ref": "#/components/headers/Tally-Receipt"}, "Tally-Milestone": {"$ref": "#/components/headers/Tally-Milestone"}} if counter else {}), "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CountBody"}}}},
        "400": err(bad_request + (", `invalid_body` (not `{\"delta\": <integer>, \"visitor\": \"…\"}`), `invalid_visitor` (a visitor key empty, over 64 characters or not printable ASCII)" if counter else ", `invalid_body` (not `{\"delta\": <integer>}`)")),
        "401": err("`write_key_required`: " + ("a delta above `PUBLIC_MAX_DELTA` without the write key" if counter else "a gauge write without the write key (and without `PUBLIC_GAUGES`)") + "; `invalid_write_key`: a key that is not the application's"),
        "413": err("`body_too_large`: a body over 1024 bytes"),
        "415": err("`unsupported_media_type`: a body declared as something other than application/json"),
        "422": err(("`invalid_delta`: a delta below 1 or above 1,000,000" if counter else "`invalid_delta`: a delta of 0 or beyond ±1,000,000") + "; `slot_overflow`: the hit would take this replica's slot past 2^64 - 1 (nothing was counted)"),
        "429": err("`too_many_new_ids`: this client used up its budget of new counter ids for the minute; ids already counted still count; `too_many_hits`: this client used up its hit budget (the `HITS` rate limit, where deployed; not with the write key); nothing was counted", {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}),
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

# Viewers now and unique visitors (edge/src/presence/, edge/src/unique/).
doc["tags"] += [{"name": "presence", "description": "Viewers now: sessions with leases, or live WebSockets"},
                {"name": "unique", "description": "Unique visitors: HyperLogLog sketches"}]
schemas = doc["components"]["schemas"]
SESSION = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9_-]+$",
           "description": "A session id: 1-64 of A-Z a-z 0-9 - _.", "examples": ["9f0c2a7d1e"]}
schemas["SessionId"] = SESSION
updated = {"description": "The newest change known; null when nothing was counted.",
           "oneOf": [{"$ref": "#/components/schemas/Timestamp"}, {"type": "null"}]}
schemas["PresenceBody"] = {"type": "object", "required": ["count", "updated_at"], "additionalProperties": False,
  "properties": {"count": {"type": "integer", "minimum": 0, "description": "Viewers now: the merger's sum of every object's fresh report, with this object's own sessions as they are now."},
                 "updated_at": updated,
                 "session": {"$ref": "#/components/schemas/SessionId", "description": "After a join: the session joined or renewed (drawn by the edge when the body named none)."},
                 "ttl_ms": {"type": "integer", "minimum": 1000, "maximum": 3600000, "description": "After a join: renew within this many milliseconds (`PRESENCE_TTL_MS`) or the session stops counting."}},
  "examples": [{"count": 12, "updated_at": "2030-10-10T12:11:42.000Z", "session": "9f0c2a7d1e", "ttl_ms": 30000}]}
VISITOR = {"type": "string", "minLength": 1, "maxLength": 256, "description": "An application's visitor key: 1 to 256 bytes of UTF-8 (hashed at the edge; the key itself is not stored)."}
schemas["UniqueBody"] = {"type": "object", "required": ["count", "error", "updated_at"], "additionalProperties": False,
  "properties": {"count": {"type": "integer", "minimum": 0, "description": "Estimated distinct visitors: the union of this object's sketch and the merger's merged one."},
                 "error": {"type": "number", "const": 0.01625, "description": "The estimate's relative standard error (precision 12: 1.04/sqrt(4096))."},
                 "updated_at": updated,
                 "day": {"type": "string", "format": "date", "description": "The UTC day of a daily sketch: after `?day=`, or after a visit without a key (counted in today's sketch only)."}},
  "examples": [{"count": 98089, "error": 0.01625, "updated_at": "2030-10-10T12:11:42.000Z"}]}
estimate = {"Tally-Estimate": {"$ref": "#/components/headers/Tally-Estimate"}}
region = [{"$ref": "#/components/parameters/region"}]
id_errors = "`empty_id`, `id_too_long`, `id_bad_char` (the id), `invalid_region` (X-Tally-Region)"
session_query = lambda required, what: {"name": "session", "in": "query", "required": required, "description": what,
                                        "schema": {"$ref": "#/components/schemas/SessionId"}}
write_key_error = err("`invalid_write_key`: an `Authorization` header that is not the application's write key")
budget = err("`too_many_new_ids`: this client used up its budget of new ids (new sessions, new sketches) for the minute", {"Retry-After": {"$ref": "#/components/headers/Retry-After"}})
preflight_op = lambda kind: {"tags": [kind], "operationId": f"preflight_{kind}", "summary": "CORS preflight",
  "description": "Answered before the path is read, whatever the id.",
  "parameters": [{"name": "id", "in": "path", "required": True, "description": "Anything.", "schema": {"type": "string"}}],
  "responses": {"204": {"description": "Allowed: GET, PUT, DELETE and OPTIONS from any origin, with the headers Content-Type, Authorization and Tally-Session"}}}
doc["paths"]["/{id}/presence"] = {
 "parameters": [{"$ref": "#/components/parameters/id"}],
 "put": {"tags": ["presence"], "operationId": "join_presence", "summary": "Join or renew a session",
   "description": "The session counts among the id's viewers until its lease (`ttl_ms`) runs out unless renewed by another `PUT` with it. No body: the edge draws a session and answers it. Stored before the answer; never waits for the merger. A new session without the write key spends the client's new-id budget; renewals do not.",
   "parameters": region,
   "security": [{}, {"write_key": []}],
   "requestBody": {"required": False, "content": {"application/json": {"schema": {
       "type": "object", "required": ["session"], "additionalProperties": False,
       "properties": {"session": {"$ref": "#/components/schemas/SessionId"}}},
       "examples": {"renew": {"value": {"session": "9f0c2a7d1e"}}}}}},
   "responses": {
    "200": {"description": "Joined or renewed: the count with this session, the session and its lease", "headers": estimate,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PresenceBody"}}}},
    "400": err(id_errors + ", `invalid_body` (not `{\"session\": \"…\"}`), `invalid_session_id`"),
    "401": write_key_error,
    "413": err("`body_too_large`: a body over 1024 bytes"),
    "415": err("`unsupported_media_type`: a body declared as something other than application/json"),
    "429": err("`too_many_new_ids`: the client's new-id budget is used up (with `Retry-After`); `too_many_sessions`: the object holds `PRESENCE_MAX_SESSIONS` sessions (existing ones still renew)",
               {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}),
   }},
 "delete": {"tags": ["presence"], "operationId": "leave_presence", "summary": "Leave at once",
   "description": "The session stops counting now, at this object at once and at the merger with the object's next report. Leaving a session that is not live changes nothing.",
   "parameters": [session_query(True, "The session to end.")] + region,
   "responses": {
    "200": {"description": "The count without this session", "headers": estimate,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PresenceBody"}}}},
    "400": err(id_errors + ", `session_required` (no `session`), `invalid_session_id`, `invalid_query` (another parameter)"),
    "401": write_key_error,
   }},
 "get": {"tags": ["presence"], "operationId": "read_presence", "summary": "Read viewers now, or open a live socket",
   "description": "Writes nothing. With `session`, the object holding that session answers, so its own join shows at once. "
     "With `Upgrade: websocket` (not described here as a parameter: the request is then a WebSocket handshake, answered 101) the socket is a session of its own: "
     "the server sends `{\"type\":\"count\",\"id\",\"count\",\"updated_at\",\"sent_at\",\"session\",\"ttl_ms\"}` on connect, `{\"type\":\"count\",\"id\",\"count\",\"updated_at\",\"sent_at\"}` whenever the count changes (at most every `PRESENCE_PUSH_MS`, by the `sent_at` times: the object's clock when it sent the message), and `{\"type\":\"pong\"}` to any client message; a client message within `ttl_ms` renews the session, a silent socket is closed with code 4000. A new socket without the write key spends the new-id budget (429).",
   "parameters": [session_query(False, "A session of this client, to read at the object holding it.")] + region,
   "responses": {
    "101": {"description": "With `Upgrade: websocket`: the live socket (see above)"},
    "200": {"description": "Viewers now", "headers": estimate,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PresenceBody"}}}},
    "400": err(id_errors + ", `invalid_session_id`, `invalid_query` (another parameter, or `session` twice)"),
    "401": write_key_error,
   }},
 "options": preflight_op("presence"),
}
doc["paths"]["/{id}/unique"] = {
 "parameters": [{"$ref": "#/components/parameters/id"}],
 "put": {"tags": ["unique"], "operationId": "visit_unique", "summary": "Count a unique visitor",
   "description": "With `visitor` or `visitors` (the application's own keys): counted in the id's all-time sketch and today's; the answer is the all-time estimate. "
     "No body: the key is derived from the client's address and user agent with a secret salt that changes each UTC day, counted in today's sketch only, and the answer is today's estimate (with `day`); the address is never stored or sent. "
     "Stored before the answer when the sketch grew; never waits for the merger. A visit that makes a sketch new to its object, without the write key, spends the client's new-id budget.",
   "parameters": region,
   "security": [{}, {"write_key": []}],
   "requestBody": {"required": False, "content": {"application/json": {"schema": {"oneOf": [
       {"type": "object", "required": ["visitor"], "additionalProperties": False, "properties": {"visitor": VISITOR}},
       {"type": "object", "required": ["visitors"], "additionalProperties": False,
        "properties": {"visitors": {"type": "array", "minItems": 1, "maxItems": 100, "items": VISITOR,
                                    "description": "1 to 100 keys (a backend forwarding visits in bulk); the whole body at most 8 KiB."}}}]},
       "examples": {"one": {"value": {"visitor": "user-42"}}}}}},
   "responses": {
    "200": {"description": "Counted: the estimate after the visit", "headers": estimate,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/UniqueBody"}}}},
    "400": err(id_errors + ", `invalid_body` (neither or both of `visitor` and `visitors`, 0 or over 100 keys), `invalid_visitor` (a key empty or over 256 bytes)"),
    "401": write_key_error,
    "413": err("`body_too_large`: a body over 8 KiB"),
    "415": err("`unsupported_media_type`: a body declared as something other than application/json"),
    "422": err("`visitor_required`: no body, and the worker has no `UNIQUE_SALT` to derive a key with"),
    "429": budget,
   }},
 "get": {"tags": ["unique"], "operationId": "read_unique", "summary": "Read distinct visitors",
   "description": "All-time, or of one UTC day with `day`. Writes nothing; a stale merged sketch is refreshed in the background. A page nobody visited answers 0.",
   "parameters": [{"name": "day", "in": "query", "required": False, "description": "`today` or a UTC day `YYYY-MM-DD`.",
                   "schema": {"type": "string", "pattern": "^(today|[0-9]{4}-[0-9]{2}-[0-9]{2})$", "examples": ["today", "2030-10-10"]}}] + region,
   "responses": {
    "200": {"description": "The estimate", "headers": estimate,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/UniqueBody"}}}},
    "400": err(id_errors + ", `invalid_day` (not `today` or a real `YYYY-MM-DD`), `invalid_query` (another parameter, or `day` twice)"),
    "401": write_key_error,
   }},
 "options": preflight_op("unique"),
}
# With `ALLOWED_ORIGINS` a list, any request from a page of another origin.
for ops in doc["paths"].values():
    for method, op in ops.items():
        if method not in ("parameters", "options"):
            op["responses"]["403"] = err("`origin_not_allowed`: the request's `Origin` is not in `ALLOWED_ORIGINS` (only when that is a list); nothing was read or counted")
            op["responses"] = dict(sorted(op["responses"].items()))
print(json.dumps(doc, indent=2, ensure_ascii=False))
