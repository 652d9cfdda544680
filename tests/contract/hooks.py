"""Schemathesis hooks of tally's contract tests (tests/tests/contract.rs), for the merger's
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
- JSON integers in integer form: JSON Schema's `integer` admits `248.0`, tally's decoder
  (serde) reads integers only in integer form (`malformed_body`).
- `GET /v1/{namespace}/{id}/history`: `from` not after `to` (`invalid_query`).
- `POST /v1/counters/{id}/import`: a counter only grows, so a negative value is for a gauge
  (`invalid_import`).

The edge:

- `Tally-Session`: each counter at most once in the token (`invalid_session`).
- `GET /counter?ids=`, `/gauge?ids=`: each id at most once (`invalid_query`).
- JSON integers in integer form, as for the merger (`invalid_body`).
"""

from datetime import datetime
from decimal import Decimal, InvalidOperation
import json

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


def _session_repeats_a_counter(headers):
    token = None
    for name, value in (headers or {}).items():
        if name.lower() == "tally-session":
            token = value
    if not isinstance(token, str):
        return False
    keys = [entry.strip().rsplit("=", 1)[0] for entry in token.split(",")]
    return len(keys) != len(set(keys))


def _ids_repeat(query):
    ids = query.get("ids") if isinstance(query, dict) else None
    if not isinstance(ids, str):
        return False
    listed = ids.split(",")
    return len(listed) != len(set(listed))


EDGE_PATHS = ("/{id}/counter", "/{id}/gauge", "/counter", "/gauge")


@schemathesis.hook
def filter_case(context, case):
    meta = case.meta
    if meta is not None and meta.generation.mode == GenerationMode.NEGATIVE:
        return True
    body = case.body if isinstance(case.body, (dict, list)) else None
    if body is not None and _integral_float(body):
        return False
    if case.path in ("/v1/sync", "/v1/read") and _repeats_a_counter(body):
        return False
    if case.path == "/v1/sync" and _v1_decrement_on_counter(body):
        return False
    if case.path == "/v1/{namespace}/{id}/history" and isinstance(case.query, dict):
        if _range_backwards(case.query):
            return False
    if case.path == "/v1/{namespace}/{id}/import" and isinstance(body, dict):
        namespace = (case.path_parameters or {}).get("namespace")
        if namespace == "counters" and _negative(body.get("count")):
            return False
    if case.path in EDGE_PATHS:
        if _session_repeats_a_counter(case.headers):
            return False
        if _ids_repeat(case.query):
            return False
    return True
