"""Schemathesis hooks of tally's contract tests (tests/tests/e2e/contract.rs), for the merger's
OpenAPI document and the edge's (docs/edge-openapi.json).

Each document says everything JSON Schema can say about a request. A few of
the merger's rules relate one part of a request to another, which JSON Schema cannot say; a
schema-valid request that breaks one is refused with a 4xx naming the rule, and the
`positive_data_acceptance` check would count that as a valid request refused. This hook keeps
such requests out of the *positive* cases only, one documented rule each; negative cases are
sent as generated (a request that breaks the rule and the schema must still be refused, and
is).

The rules, each answered with its own error code (docs/protocol.md). The merger:

- `/v1/sync`, `/v1/read`: each `(id, kind)` at most once per request (`duplicate_counter`).
- `/v1/sync` of protocol version 1: a counter of kind `g` carries no decrements (`n` is 0),
  or the whole sync is refused (`decrement_on_counter`; version 2 answers that counter alone,
  so there the request is accepted).
- `/v1/sync` of protocol version 1 or 2: no counter carries `visits` (they came with version
  3), or the whole sync is refused (`malformed_body`).
- `/v1/sync` below protocol version 4: no counter carries a non-zero `carried` (it came with
  version 4), or the whole sync is refused (`malformed_body`).
- `/v1/sync` below protocol version 5: no counter carries a `frame` (it came with version 5),
  or the whole sync is refused (`malformed_body`).
- `/v1/sync` below protocol version 6: no counter carries a `cut` (it came with version 6),
  or the whole sync is refused (`malformed_body`).
- JSON integers in integer form: JSON Schema's `integer` admits `248.0`, tally's decoder
  (serde) reads integers only in integer form (`malformed_body`).
- `GET /v1/{namespace}/{id}/history`: `from` not after `to` (`invalid_query`).
- `POST /v1/counters/{id}/import`: a counter only grows, so a negative value is for a gauge
  (`invalid_import`).
- `/v1/presence`, `/v1/read/presence`: each presence id at most once (`duplicate_id`).
- `/v1/unique`, `/v1/read/unique`: each `(id, day)` at most once (`duplicate_id`); a day is a
  real calendar day (`2030-02-30` matches the pattern and is refused as `malformed_body`, or
  `invalid_query` for `GET /v1/unique/{id}?day=`).
- `GET /v1/{namespace}/{id}/receipts/{receipt}`: a receipt is signed with the sync token for
  its counter (`tally_crdt::Receipt`), which no pattern can state. For positive cases the hook
  `map_case` puts a real receipt of the case's counter in place of the generated string.
- `/v1/unique`: `registers` is a HyperLogLog sketch of precision 12 in its wire form, which
  no pattern can state (sorted sparse entries, registers in range). For positive cases the
  hook `map_case` puts one of a few real sketches in place of the generated string; negative
  cases keep theirs.

The edge:

- `GET /counter?ids=`, `/gauge?ids=`: each id at most once (`invalid_query`).
- JSON integers in integer form, as for the merger (`invalid_body`).
- `PUT /{id}/unique`: a visitor key is at most 256 bytes of UTF-8 (JSON Schema's `maxLength`
  counts characters; `invalid_visitor`), and the body at most 8 KiB (100 keys of 256
  characters would not fit; `body_too_large`).
- `GET /{id}/unique?day=`: a real calendar day (`invalid_day`), as for the merger.
"""

import base64
from datetime import datetime
import hashlib
import hmac
import os
from decimal import Decimal, InvalidOperation
import json
import re

import schemathesis
from schemathesis import GenerationMode


def _integral_float(value):
    """Whether a float with no fractional part appears anywhere in `value`."""
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, dict):
        return any(_integral_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_integral_float(v) for v in value)
    return False


def _repeats_a_counter(body):
    """Whether the body's `counters` name one `(id, kind)` twice."""
    counters = body.get("counters") if isinstance(body, dict) else None
    if not isinstance(counters, list):
        return False
    keys = [
        json.dumps([c.get("id"), c.get("kind")], sort_keys=True)
        for c in counters
        if isinstance(c, dict)
    ]
    return len(keys) != len(set(keys))


def _v1_decrement_on_counter(body):
    """Whether a version-1 sync carries a decrement total on an increment-only counter."""
    if not isinstance(body, dict) or body.get("version") != 1:
        return False
    counters = body.get("counters")
    return isinstance(counters, list) and any(
        isinstance(c, dict) and c.get("kind") == "g" and c.get("n", 0) != 0 for c in counters
    )


def _carried_before_v4(body):
    """Whether a sync of a version below 4 carries a non-zero carry (it came with version 4)."""
    counters = body.get("counters") if isinstance(body, dict) else None
    if not isinstance(body, dict) or body.get("version") not in (1, 2, 3):
        return False
    if not isinstance(counters, list):
        return False
    return any(
        isinstance(c, dict)
        and isinstance(c.get("carried"), dict)
        and any(v not in (0, None) for v in c["carried"].values())
        for c in counters
    )


def _frame_before_v5(body):
    """Whether a sync of a version below 5 carries a frame (it came with version 5)."""
    if not isinstance(body, dict) or body.get("version") not in (1, 2, 3, 4):
        return False
    counters = body.get("counters")
    return isinstance(counters, list) and any(
        isinstance(c, dict) and c.get("frame") is not None for c in counters
    )


def _cut_before_v6(body):
    """Whether a sync of a version below 6 carries a cut (it came with version 6)."""
    if not isinstance(body, dict) or body.get("version") not in (1, 2, 3, 4, 5):
        return False
    counters = body.get("counters")
    return isinstance(counters, list) and any(
        isinstance(c, dict) and c.get("cut") is not None for c in counters
    )


def _visits_before_v3(body):
    """Whether a sync of version 1 or 2 carries visits (they came with version 3)."""
    if not isinstance(body, dict) or body.get("version") not in (1, 2):
        return False
    counters = body.get("counters")
    return isinstance(counters, list) and any(
        isinstance(c, dict) and c.get("visits") for c in counters
    )


def _time(text):
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return None


def _range_backwards(query):
    start, end = _time(query.get("from")), _time(query.get("to"))
    try:
        return start is not None and end is not None and start > end
    except TypeError:  # one naive, one aware: the server refuses those as malformed anyway
        return False


def _negative(count):
    if isinstance(count, bool):
        return False
    if isinstance(count, (int, float)):
        return count < 0
    if isinstance(count, str):
        try:
            return Decimal(count) < 0
        except InvalidOperation:
            return False
    return False


def _ids_repeat(query):
    ids = query.get("ids") if isinstance(query, dict) else None
    if not isinstance(ids, str):
        return False
    listed = ids.split(",")
    return len(listed) != len(set(listed))


EDGE_PATHS = ("/{id}/counter", "/{id}/gauge", "/counter", "/gauge")
# edge/src/unique/mod.rs: MAX_VISITOR_LEN, MAX_VISITS_BODY_BYTES.
MAX_VISITOR_BYTES = 256
MAX_VISITS_BODY_BYTES = 8 * 1024

# Real sketches of precision 12 (tally_crdt::HyperLogLog, serde form): of nothing, of one
# item, of three.
SKETCHES = ("AQwA", "AQwAAmDB", "AQwAAKfCAmDBAmXC")


def _real_day(text):
    """Whether `text` is a day `Day` parses: YYYY-MM-DD of a real date, years 0000-9999."""
    if not isinstance(text, str) or len(text) != 10 or text[4] != "-" or text[7] != "-":
        return False
    try:
        year, month, day = int(text[:4]), int(text[5:7]), int(text[8:])
    except ValueError:
        return False
    if not (text[:4] + text[5:7] + text[8:]).isdigit() or not 1 <= month <= 12:
        return False
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days = [31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]
    return 1 <= day <= days


def _repeats_a_key(items, fields):
    if not isinstance(items, list):
        return False
    keys = [
        json.dumps([item.get(f) for f in fields]) if isinstance(item, dict) else json.dumps(item)
        for item in items
    ]
    return len(keys) != len(set(keys))


def _bad_days(items):
    return isinstance(items, list) and any(
        isinstance(item, dict) and item.get("day") is not None and not _real_day(item["day"])
        for item in items
    )


def _receipt(counter):
    """A real receipt (tally_crdt::Receipt, version 1) of `counter`: replica 1, its slot's
    unit 1, signed with the merger's sync token."""
    body = bytes([1]) + (1).to_bytes(16, "big") + (1).to_bytes(8, "big") + (1).to_bytes(4, "big")
    key = os.environ.get("TALLY_SYNC_TOKEN", "").encode()
    mac = hmac.new(key, b"tally-receipt:v1:" + counter.encode() + b":" + body, hashlib.sha256)
    return base64.urlsafe_b64encode(body + mac.digest()[:8]).decode().rstrip("=")


@schemathesis.hook
def map_case(context, case):
    meta = case.meta
    if meta is not None and meta.generation.mode == GenerationMode.NEGATIVE:
        return case
    if case.path == "/v1/{namespace}/{id}/receipts/{receipt}":
        counter = (case.path_parameters or {}).get("id")
        if isinstance(counter, str) and "receipt" in (case.path_parameters or {}):
            case.path_parameters["receipt"] = _receipt(counter)
    if case.path == "/v1/unique" and isinstance(case.body, dict):
        sketches = case.body.get("sketches")
        if isinstance(sketches, list):
            for i, sketch in enumerate(sketches):
                if isinstance(sketch, dict) and "registers" in sketch:
                    sketch["registers"] = SKETCHES[i % len(SKETCHES)]
    return case


COUNTER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@schemathesis.hook
def filter_case(context, case):
    meta = case.meta
    if meta is not None and meta.generation.mode == GenerationMode.NEGATIVE:
        return True
    # The stateful phase carries values from one request into the next through the links it
    # infers (the `ids` of a presence read into the `{id}` of `GET /v1/presence/{id}`), and
    # such values are not drawn from the path parameter's schema: one that is not an id
    # (the whole list, as text) is no positive case.
    path_id = (case.path_parameters or {}).get("id")
    if path_id is not None and not (isinstance(path_id, str) and COUNTER_ID.fullmatch(path_id)):
        return False
    body = case.body if isinstance(case.body, (dict, list)) else None
    if body is not None and _integral_float(body):
        return False
    if case.path in ("/v1/sync", "/v1/read") and _repeats_a_counter(body):
        return False
    if case.path == "/v1/sync" and (
        _v1_decrement_on_counter(body)
        or _visits_before_v3(body)
        or _carried_before_v4(body)
        or _frame_before_v5(body)
        or _cut_before_v6(body)
    ):
        return False
    if case.path == "/v1/{namespace}/{id}/history" and isinstance(case.query, dict):
        if _range_backwards(case.query):
            return False
    if case.path == "/v1/{namespace}/{id}/import" and isinstance(body, dict):
        namespace = (case.path_parameters or {}).get("namespace")
        if namespace == "counters" and _negative(body.get("count")):
            return False
    if isinstance(body, dict):
        if case.path == "/v1/presence" and _repeats_a_key(body.get("counts"), ["id"]):
            return False
        if case.path == "/v1/read/presence" and _repeats_a_key(body.get("ids"), []):
            return False
        if case.path in ("/v1/unique", "/v1/read/unique"):
            sketches = body.get("sketches")
            if _repeats_a_key(sketches, ["id", "day"]) or _bad_days(sketches):
                return False
    if case.path == "/v1/unique/{id}" and isinstance(case.query, dict):
        day = case.query.get("day")
        if day is not None and day != "today" and not _real_day(day):
            return False
    if case.path == "/{id}/unique" and isinstance(case.query, dict):
        day = case.query.get("day")
        if day is not None and day != "today" and not _real_day(day):
            return False
    if case.path == "/{id}/unique" and isinstance(body, dict):
        keys = body.get("visitors") or [body.get("visitor")]
        if any(isinstance(k, str) and len(k.encode()) > MAX_VISITOR_BYTES for k in keys):
            return False
        if len(json.dumps(body).encode()) > MAX_VISITS_BODY_BYTES:
            return False
    if case.path in EDGE_PATHS:
        if _ids_repeat(case.query):
            return False
    return True
