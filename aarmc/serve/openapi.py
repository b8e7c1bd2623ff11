"""The OpenAPI 3.1 description of the HTTP decision API, built from the schemas that validate requests.

`docs/openapi.json` is this document as `aarmc serve --print-openapi` writes
it; a test regenerates it and fails when the file is stale.
"""

from __future__ import annotations

import json
from typing import Any

from aarmc.serve.schema import REQUESTS, RESPONSES

__all__ = ["openapi_document", "openapi_text"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*codes: int) -> dict[str, Any]:
    what = {
        400: "malformed request: not JSON, unknown fields, wrong types (`error.message` names the field)",
        401: "the approval token is missing or wrong (servers started with --approval-token-file)",
        404: "no such session, approval or deferral",
        409: "refused in this state (already answered, timed out, not authorised to run, ...)",
        413: "the request body is larger than the server's limit",
        415: "the request body is not `application/json` in UTF-8",
        429: "too many open sessions",
        503: "a receipt could not be written, or (replicas) the session store could not be read: nothing was "
             "recorded, so nothing may run",
    }
    return {str(c): _json("Error", what[c]) for c in codes}


_BODY_ERRORS = (400, 413, 415)


def _op(summary: str, description: str, ok: tuple[str, str, str], *, body: str | None = None,
        errors: tuple[int, ...] = (), op_id: str, params: tuple[str, ...] = (), tag: str) -> dict[str, Any]:
    status, schema, what = ok
    op: dict[str, Any] = {"operationId": op_id, "summary": summary, "description": description, "tags": [tag]}
    if params:
        op["parameters"] = [{"name": p, "in": "path", "required": True,
                             "schema": {"type": "string", "minLength": 1, "maxLength": 256}} for p in params]
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
        errors = tuple(sorted(set(errors) | set(_BODY_ERRORS)))
    op["responses"] = {status: _json(schema, what), **_errors(*errors)}
    return op


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1.0 document (a fresh dict each call)."""
    from aarmc.serve.app import API_VERSION

    paths: dict[str, Any] = {
        "/v1/sessions": {"post": _op(
            "Open a session", "Verifies the identity assertion, writes the session-start receipt.",
            ("201", "Session", "the session"), body="OpenSession", errors=(409, 429, 503),
            op_id="openSession", tag="sessions")},
        "/v1/sessions/{session_id}": {"delete": _op(
            "Close a session", "Cancels what is still pending in it (receipts say so), writes session-end.",
            ("200", "Closed", "closed"), errors=(404, 503), op_id="closeSession", params=("session_id",),
            tag="sessions")},
        "/v1/sessions/{session_id}/decide": {"post": _op(
            "Decide a tool call before it runs",
            "The decision is in the receipt log, durably, before this answer is sent. Execute only on "
            "`allow` / `modify`.",
            ("200", "Submission", "the decision"), body="Decide", errors=(404, 503), op_id="decide",
            params=("session_id",), tag="decisions")},
        "/v1/sessions/{session_id}/redeem": {"post": _op(
            "Retry a pending call",
            "For a STEP_UP: `allow` once approved (single use, same tool and params), `deny` once rejected or "
            "timed out, else still `pending`. For a DEFER: the re-evaluation's decision once context arrived.",
            ("200", "Submission", "the decision"), body="Redeem", errors=(404, 503), op_id="redeem",
            params=("session_id",), tag="decisions")},
        "/v1/sessions/{session_id}/outcome": {"post": _op(
            "Record what an allowed call did",
            "Writes the outcome receipt; the output's labels, tags and provenance enter the session.",
            ("200", "Recorded", "recorded"), body="Outcome", errors=(404, 409, 503), op_id="recordOutcome",
            params=("session_id",), tag="decisions")},
        "/v1/approvals": {"get": {
            "operationId": "listApprovals", "summary": "List pending step-ups and deferrals", "tags": ["approvals"],
            "parameters": [{"name": "status", "in": "query", "required": False,
                            "schema": {"enum": ["pending"], "default": "pending"}}],
            "responses": {"200": _json("Approvals", "pending requests, oldest first"), **_errors(400, 401)}}},
        "/v1/approvals/{decision_id}/approve": {"post": _op(
            "Approve a STEP_UP", "The approval receipt (approver named) is written before this answer.",
            ("200", "Answer", "approved"), body="Approve", errors=(401, 404, 409, 503), op_id="approve",
            params=("decision_id",), tag="approvals")},
        "/v1/approvals/{decision_id}/reject": {"post": _op(
            "Reject a STEP_UP", "The call is denied; the rejection receipt is written before this answer.",
            ("200", "Answer", "rejected"), body="Reject", errors=(401, 404, 409, 503), op_id="reject",
            params=("decision_id",), tag="approvals")},
        "/v1/deferrals/{decision_id}/provide": {"post": _op(
            "Provide context for a DEFER", "The call is decided again, with the context, at its next redeem.",
            ("200", "Provided", "accepted"), body="Provide", errors=(401, 404, 409), op_id="provideContext",
            params=("decision_id",), tag="approvals")},
        "/v1/deferrals/{decision_id}/deny": {"post": _op(
            "Deny a DEFER", "The call is denied; the deferral-resolution receipt is written first.",
            ("200", "DeferralDenied", "denied"), body="DenyDeferral", errors=(401, 404, 409, 503),
            op_id="denyDeferral", params=("decision_id",), tag="approvals")},
        "/healthz": {"get": {
            "operationId": "health", "summary": "Policy and receipt log status", "tags": ["operations"],
            "responses": {"200": _json("Health", "healthy"),
                          "503": _json("Health", "unhealthy: no policy, or the receipt log is closed or failed "
                                                 "(every decision is then a DENY)")}}},
        "/metrics": {"get": {
            "operationId": "metrics", "summary": "Prometheus metrics", "tags": ["operations"],
            "description": "`aarm_decisions_total{effect}`, `aarm_decision_status_total{status}`, "
                           "`aarm_decision_latency_seconds` (histogram), `aarm_pending_approvals`, "
                           "`aarm_http_rejected_total{code}`, `aarm_internal_errors_total`.",
            "responses": {"200": {"description": "text format 0.0.4",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This description", "tags": ["operations"],
            "responses": {"200": {"description": "OpenAPI 3.1",
                                  "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "aarmc decision API",
            "version": API_VERSION,
            "summary": "Decide AI-agent tool calls before they run, with signed receipts (AARM)",
            "description": "Served by `aarmc serve`. An interceptor opens a session, asks for a decision before "
                           "every tool call, executes only on `allow` / `modify` and reports the outcome. "
                           "Bodies are JSON; numbers are exact (decimals are never rounded through floats); "
                           "unknown fields are refused. See docs/guide.md.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": paths,
        "components": {"schemas": {**json.loads(json.dumps(REQUESTS)), **json.loads(json.dumps(RESPONSES))}},
    }


def openapi_text() -> str:
    """The document as written to docs/openapi.json: sorted keys, two-space indent, final newline."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
