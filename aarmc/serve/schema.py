"""The HTTP API's request and response shapes: one JSON Schema each, for validation and for OpenAPI.

Requests are checked against these schemas by `check` (a small validator for
the subset used here: type, properties, required, additionalProperties,
enum, minLength/maxLength, minimum), so the published description and
the server cannot disagree. Bodies are parsed with
`aarm_runtime.values.load_json`: numbers stay exact (decimals, never
floats), duplicate keys and over-deep nesting are refused.

>>> check(REQUESTS["Approve"], {"approver": "alice", "extra": 1})
Traceback (most recent call last):
...
aarmc.serve.schema.RequestError: `$.extra`: unknown field (expected `approver`, `args_hash`, `reason`)
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

__all__ = ["RequestError", "REQUESTS", "RESPONSES", "check"]

# An identity token is at most `identity.MAX_TOKEN_SIZE` (16 KiB) bytes; base64 makes that 4/3 longer.
MAX_TOKEN_BASE64 = 21848
MAX_NAME = 256
MAX_TEXT = 4096

_ID = {"type": "string", "minLength": 1, "maxLength": MAX_NAME}
_JSON_OBJECT = {"type": "object", "description": "any JSON object"}

REQUESTS: dict[str, dict[str, Any]] = {
    "OpenSession": {
        "type": "object",
        "description": "Open a session. `identity_token` is the identity assertion (a CWT in COSE_Sign1, "
                       "docs/identity.md) in standard base64. `identity` (a LANGUAGE.md §7 identity object taken "
                       "as given) is accepted only by a server started with --unsafe-no-identity.",
        "properties": {
            "identity_token": {"type": "string", "minLength": 1, "maxLength": MAX_TOKEN_BASE64},
            "identity": _JSON_OBJECT,
            "intent": {"type": ["object", "null"],
                       "description": "the user's request: {text, entities, tools, score}, LANGUAGE.md §7"},
            "env": {"type": ["object", "null"], "description": "environment facts the policy declares"},
            "session_id": _ID,
        },
        "additionalProperties": False,
    },
    "Decide": {
        "type": "object",
        "properties": {
            "tool": _ID,
            "params": {"type": "object", "description": "the tool call's arguments (default {})"},
            "risk": {"type": ["object", "null"], "description": "risk signals, e.g. {\"drift\": 0.1}"},
        },
        "required": ["tool"],
        "additionalProperties": False,
    },
    "Outcome": {
        "type": "object",
        "properties": {
            "decision_id": _ID,
            "ok": {"type": "boolean"},
            "output": {"description": "what the tool returned (any JSON); its labels, tags and provenance "
                                      "enter the session"},
            "error": {"type": "string", "maxLength": MAX_TEXT},
            "started_ns": {"type": "integer", "minimum": 0},
            "ended_ns": {"type": "integer", "minimum": 0},
        },
        "required": ["decision_id", "ok"],
        "additionalProperties": False,
    },
    "Approve": {
        "type": "object",
        "description": "`args_hash`, when given, must be the hash the approver was shown (GET /v1/approvals): "
                       "the approval then answers for exactly those arguments.",
        "properties": {"approver": _ID, "args_hash": {"type": "string", "minLength": 64, "maxLength": 64},
                       "reason": {"type": "string", "maxLength": MAX_TEXT}},
        "required": ["approver"],
        "additionalProperties": False,
    },
    "Reject": {
        "type": "object",
        "properties": {"approver": _ID, "reason": {"type": "string", "maxLength": MAX_TEXT}},
        "required": ["approver"],
        "additionalProperties": False,
    },
    "Provide": {
        "type": "object",
        "description": "Context for a deferred decision (DEFER): env and intent values for the session, risk "
                       "values for the action. The action is decided again, under a new decision id, at its "
                       "next redemption. With `session` (the deferral's session, as listed by "
                       "/v1/approvals), the context is kept in the session: with a shared session store, any "
                       "replica may take it and whichever replica the retry reaches decides with it.",
        "properties": {"by": _ID, "env": {"type": "object"}, "intent": {"type": "object"},
                       "risk": {"type": "object"}, "session": _ID},
        "required": ["by"],
        "additionalProperties": False,
    },
    "DenyDeferral": {
        "type": "object",
        "description": "Deny a deferred decision now. With `session`, any replica sharing the session may "
                       "take the denial (its receipt goes in that replica's log).",
        "properties": {"by": _ID, "reason": {"type": "string", "maxLength": MAX_TEXT}, "session": _ID},
        "required": ["by"],
        "additionalProperties": False,
    },
    "Redeem": {
        "type": "object",
        "description": "Retry a pending call once it was approved: the same tool and params (bound to the "
                       "argument hash), carrying the decision id. Single use.",
        "properties": {"decision_id": _ID, "tool": _ID, "params": {"type": "object"}},
        "required": ["decision_id", "tool"],
        "additionalProperties": False,
    },
}

_DECISION_RECORD = {
    "type": "object",
    "description": "The decision record (LANGUAGE.md §5), as `aarmc eval --format json` prints it. Decimal "
                   "numbers in `params` are exact JSON numbers.",
    "properties": {
        "decision": {"enum": ["allow", "deny", "modify", "step_up", "defer"]},
        "rules": {"type": "array", "items": {"type": "string"}},
        "reason": {"type": "string"},
        "message": {"type": "string"},
        "fields": {"type": "array", "items": {"type": "string"}},
        "params": {"type": "object", "description": "MODIFY: the params the tool must run with"},
        "approvers": {"type": "array", "items": {"type": "string"}},
        "timeout_s": {"type": ["integer", "null"]},
        "tool": {"type": "string"},
        "wrapper": {"type": "string"},
    },
    "required": ["decision", "rules", "reason", "message"],
}

_STR_LIST = {"type": "array", "items": {"type": "string"}}

RESPONSES: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                "required": ["code", "message"],
            },
        },
        "required": ["error"],
    },
    "Session": {
        "type": "object",
        "description": "A refused identity does not refuse the session: it opens (its session-start receipt "
                       "names the refusal), `identity_error` says why, and every decision in it is a DENY.",
        "properties": {
            "session_id": {"type": "string"},
            "identity": {"type": ["object", "null"], "description": "the identity the policy sees"},
            "expires_at": {"type": ["number", "null"], "description": "seconds since the epoch"},
            "identity_error": {
                "type": "object",
                "properties": {"reason": {"type": "string"}, "message": {"type": "string"}},
                "required": ["reason", "message"],
            },
        },
        "required": ["session_id", "identity", "expires_at"],
    },
    "Closed": {
        "type": "object",
        "properties": {"session_id": {"type": "string"}, "closed": {"const": True}},
        "required": ["session_id", "closed"],
    },
    "DecisionRecord": _DECISION_RECORD,
    "Submission": {
        "type": "object",
        "description": "Execute the call only when `status` is `allow` or `modify`, and then with `params` "
                       "(for `modify` the policy's rewritten params). `pending`: a human or more context is "
                       "needed; answer the agent with `retry` and call /redeem once approved. `deny`, and any "
                       "answer other than 200, means: do not execute. `decision_id` is null only when the "
                       "guard itself failed (then no receipt could be written).",
        "properties": {
            "status": {"enum": ["allow", "modify", "deny", "pending"]},
            "decision_id": {"type": ["string", "null"]},
            "action_id": {"type": ["string", "null"], "description": "the proposed call; kept across redeems"},
            "args_hash": {"type": ["string", "null"],
                          "description": "hex SHA-256 binding an approval to these arguments"},
            "decision": {"$ref": "#/components/schemas/DecisionRecord"},
            "params": {"type": "object", "description": "allow and modify: the params to execute with"},
            "deadline": {"type": ["number", "null"], "description": "pending: when it times out (DENY)"},
            "retry": {"type": "string", "description": "pending: `pending approval <decision_id>`"},
        },
        "required": ["status", "decision_id", "action_id", "args_hash", "decision"],
    },
    "Recorded": {
        "type": "object",
        "properties": {"recorded": {"const": True}, "decision_id": {"type": "string"}},
        "required": ["recorded", "decision_id"],
    },
    "Approval": {
        "type": "object",
        "description": "A pending STEP_UP (`kind` step_up: approve or reject it) or DEFER (`kind` defer: "
                       "provide context or deny it). Params are not listed: they may be sensitive.",
        "properties": {
            "kind": {"enum": ["step_up", "defer"]},
            "status": {"const": "pending"},
            "decision_id": {"type": "string"},
            "session": {"type": "string"},
            "action_id": {"type": "string"},
            "tool": {"type": "string"},
            "wrapper": {"type": ["string", "null"]},
            "args_hash": {"type": "string"},
            "approvers": _STR_LIST,
            "rules": _STR_LIST,
            "message": {"type": "string"},
            "principal": {"type": ["string", "null"]},
            "requested_at": {"type": "number"},
            "deadline": {"type": "number"},
            "reason": {"type": "string"},
            "fields": _STR_LIST,
            "depends_on": _STR_LIST,
        },
        "required": ["kind", "status", "decision_id", "session", "tool", "args_hash", "deadline"],
    },
    "Approvals": {
        "type": "object",
        "properties": {"approvals": {"type": "array", "items": {"$ref": "#/components/schemas/Approval"}}},
        "required": ["approvals"],
    },
    "Answer": {
        "type": "object",
        "properties": {"decision_id": {"type": "string"}, "verdict": {"enum": ["approved", "rejected"]},
                       "approver": {"type": "string"}, "args_hash": {"type": "string"}},
        "required": ["decision_id", "verdict", "approver", "args_hash"],
    },
    "Provided": {
        "type": "object",
        "properties": {"decision_id": {"type": "string"}, "provided": {"const": True},
                       "retry": {"type": "string"}},
        "required": ["decision_id", "provided"],
    },
    "DeferralDenied": {
        "type": "object",
        "properties": {"decision_id": {"type": "string"}, "denied": {"const": True}},
        "required": ["decision_id", "denied"],
    },
    "Health": {
        "type": "object",
        "properties": {
            "status": {"enum": ["ok", "unhealthy"]},
            "policy": {
                "type": "object",
                "properties": {"id": {"type": ["string", "null"]}, "version": {"type": ["string", "null"]},
                               "digest": {"type": ["string", "null"], "description": "hex SHA-256 of the artifact"}},
                "required": ["id", "version", "digest"],
            },
            "receipts": {
                "type": "object",
                "properties": {"path": {"type": ["string", "null"]}, "records": {"type": ["integer", "null"]},
                               "writable": {"type": "boolean"}, "problem": {"type": ["string", "null"]}},
                "required": ["path", "records", "writable", "problem"],
            },
            "sessions": {"type": "integer"},
            "problems": _STR_LIST,
        },
        "required": ["status", "policy", "receipts", "sessions", "problems"],
    },
}


class RequestError(ValueError):
    """A request body does not match its schema; `path` is a JSON path into the body."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"`{path}`: {message}")
        self.path = path
        self.message = message


_TYPES = ("object", "array", "string", "boolean", "integer", "number", "null")


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, Decimal):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


_ARTICLE = {"object": "an object", "array": "an array", "string": "a string", "boolean": "a boolean",
            "integer": "an integer", "number": "a number", "null": "null"}


def _matches(kind: str, wanted: str) -> bool:
    return kind == wanted or (wanted == "number" and kind == "integer")


def check(schema: Mapping[str, Any], value: Any, path: str = "$") -> None:
    """Raise `RequestError` at the first place where *value* does not match *schema*."""
    wanted = schema.get("type")
    if wanted is not None:
        options = [wanted] if isinstance(wanted, str) else list(wanted)
        kind = _type_of(value)
        if not any(_matches(kind, w) for w in options):
            expected = " or ".join(_ARTICLE[w] for w in options)
            raise RequestError(path, f"expected {expected}, got {_ARTICLE.get(kind, kind)}")
    if "enum" in schema and value not in schema["enum"]:
        raise RequestError(path, "expected one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise RequestError(path, "must not be empty" if schema["minLength"] == 1
                               else f"must be at least {schema['minLength']} characters long")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise RequestError(path, f"must be at most {schema['maxLength']} characters long")
    if isinstance(value, int) and not isinstance(value, bool) and "minimum" in schema \
            and value < schema["minimum"]:
        raise RequestError(path, f"must be at least {schema['minimum']}")
    if isinstance(value, Mapping) and "properties" in schema:
        props = schema["properties"]
        if schema.get("additionalProperties", True) is False:
            for key in value:
                if key not in props:
                    expected = ", ".join(f"`{k}`" for k in props)
                    raise RequestError(f"{path}.{key}", f"unknown field (expected {expected})")
        for key in schema.get("required", ()):
            if key not in value:
                raise RequestError(f"{path}.{key}", "missing required field")
        for key, sub in props.items():
            if key in value:
                check(sub, value[key], f"{path}.{key}")
