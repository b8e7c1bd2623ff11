"""The context of a decision, derived from a session file (LANGUAGE.md §7).

Two stages, because they fail differently:

- `read_action` / `read_session` check the *file format*: an action is an
  object with a string `tool` and an optional `params`; a session is an object
  whose keys are among `identity intent env risk now history`, whose sections
  are objects, whose `history` is a list of objects with a string `tool`, and
  whose times are RFC 3339. A violation is a `SessionFileError` located by a
  JSON path (`$.history[2].time`): the input is not a session at all, so
  there is nothing to decide.
- `derive_context` checks the *values* of context attributes against the
  policy (env values against their declared types, risk signals in [0, 1],
  identity and intent attributes of the right type). A violation is an
  `InvalidContext`, which `decide` turns into DENY `invalid-params`: an
  interceptor supplied a bad signal, and the record must say so (fail closed).

Attributes inside `identity`, `intent`, `env` and `risk` that the language
does not know (or that this policy does not declare, for `env`) are ignored:
one interceptor may serve several policies. Every risk value is still checked
to be in [0, 1], since that is what a risk signal is.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from decimal import Decimal
from fractions import Fraction
from typing import Any

import attrs

from aarm_runtime import values
from aarmc.semantics import ir

SESSION_KEYS = ("identity", "intent", "env", "risk", "now", "history")
HISTORY_KEYS = ("tool", "params", "time", "output")
ACTION_KEYS = ("tool", "params")
IDENTITY_STR_KEYS = ("principal", "agent", "service", "session", "role")


class SessionFileError(ValueError):
    """A malformed action or session file; `path` is a JSON path (`$.history[0].tool`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class InvalidContext(ValueError):
    """A context attribute with a value of the wrong type or range (DENY `invalid-params`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"session `{path}`: {message}")
        self.path = path
        self.message = message


# ---- the file format ------------------------------------------------------------

@attrs.frozen(kw_only=True)
class Entry:
    """One executed action of the history; `time` in seconds since the epoch, exactly."""
    tool: str
    time: Fraction | None
    has_output: bool
    output: Any = None


@attrs.frozen(kw_only=True)
class SessionData:
    """A structurally valid session file; None = the section is absent."""
    identity: Mapping[str, Any] | None = None
    intent: Mapping[str, Any] | None = None
    env: Mapping[str, Any] | None = None
    risk: Mapping[str, Any] | None = None
    now: Fraction | None = None
    history: tuple[Entry, ...] = ()


def _kind(raw: Any) -> str:
    if raw is None:
        return "null"
    if isinstance(raw, bool):
        return "a boolean"
    if isinstance(raw, (int, Decimal, float)):
        return "a number"
    if isinstance(raw, str):
        return "a string"
    if isinstance(raw, (list, tuple)):
        return "an array"
    if isinstance(raw, Mapping):
        return "an object"
    return f"a `{type(raw).__name__}`"


def _check_keys(obj: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
    for key in obj:
        if key not in allowed:
            expected = ", ".join(f"`{k}`" for k in allowed)
            raise SessionFileError(f"{path}", f"unknown key `{key}` (expected {expected})")


def read_action(raw: Any) -> tuple[str, Any]:
    """(tool, raw params) of an action file; params default to `{}`.

    The params are returned unchecked: their validation is step 1 of the
    decision (DENY `invalid-params`), not a file-format error.

    >>> read_action({"tool": "db.query", "params": {"sql": "select 1"}})
    ('db.query', {'sql': 'select 1'})
    """
    if not isinstance(raw, Mapping):
        raise SessionFileError("$", f"an action must be an object, got {_kind(raw)}")
    _check_keys(raw, ACTION_KEYS, "$")
    if "tool" not in raw:
        raise SessionFileError("$", "an action needs a `tool`")
    tool = raw["tool"]
    if not isinstance(tool, str):
        raise SessionFileError("$.tool", f"expected a string, got {_kind(tool)}")
    return tool, raw.get("params", {})


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?(?:[Zz]|([+-])(\d{2}):(\d{2}))"
)
_EPOCH = datetime.date(1970, 1, 1).toordinal()


def parse_time(text: Any, path: str) -> Fraction:
    """An RFC 3339 date-time as exact seconds since 1970-01-01T00:00:00Z.

    Exact (a Fraction), so that a window boundary `(now - D, now]` never
    depends on float rounding. Leap seconds (`:60`) are refused: no clock in
    this system produces them and they have no unique place on the timeline.

    >>> parse_time("1970-01-01T01:00:00.5+01:00", "$.now")
    Fraction(1, 2)
    """
    if not isinstance(text, str):
        raise SessionFileError(path, f"expected an RFC 3339 date-time string, got {_kind(text)}")
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise SessionFileError(path, f"`{text}` is not an RFC 3339 date-time (e.g. `2026-11-26T10:00:00Z`)")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    try:
        date = datetime.date(year, month, day)
    except ValueError:
        raise SessionFileError(path, f"`{text}` is not a valid calendar date") from None
    if hour > 23 or minute > 59 or second > 59:
        raise SessionFileError(path, f"`{text}` has an invalid time of day (leap seconds are not accepted)")
    offset = 0
    if m.group(8) is not None:
        off_h, off_m = int(m.group(9)), int(m.group(10))
        if off_h > 23 or off_m > 59:
            raise SessionFileError(path, f"`{text}` has an invalid UTC offset")
        offset = (off_h * 3600 + off_m * 60) * (1 if m.group(8) == "+" else -1)
    fraction = Fraction(m.group(7)[1:]) / 10 ** (len(m.group(7)) - 1) if m.group(7) else Fraction(0)
    days = date.toordinal() - _EPOCH
    return Fraction(days * 86400 + hour * 3600 + minute * 60 + second - offset) + fraction


def _section(raw: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    if key not in raw:
        return None
    value = raw[key]
    if not isinstance(value, Mapping):
        raise SessionFileError(f"$.{key}", f"expected an object, got {_kind(value)}")
    return value


def read_session(raw: Any) -> SessionData:
    """Check the structure of a session file (None = an empty session).

    >>> read_session({"history": [{"tool": "web.get", "output": "x"}]}).history[0].tool
    'web.get'
    """
    if raw is None:
        return SessionData()
    if not isinstance(raw, Mapping):
        raise SessionFileError("$", f"a session must be an object, got {_kind(raw)}")
    _check_keys(raw, SESSION_KEYS, "$")
    now = parse_time(raw["now"], "$.now") if "now" in raw else None
    history_raw = raw.get("history", [])
    if not isinstance(history_raw, (list, tuple)):
        raise SessionFileError("$.history", f"expected an array, got {_kind(history_raw)}")
    history = []
    for i, item in enumerate(history_raw):
        path = f"$.history[{i}]"
        if not isinstance(item, Mapping):
            raise SessionFileError(path, f"expected an object, got {_kind(item)}")
        _check_keys(item, HISTORY_KEYS, path)
        if "tool" not in item:
            raise SessionFileError(path, "a history entry needs a `tool`")
        if not isinstance(item["tool"], str):
            raise SessionFileError(f"{path}.tool", f"expected a string, got {_kind(item['tool'])}")
        if "params" in item and not isinstance(item["params"], Mapping):
            raise SessionFileError(f"{path}.params", f"expected an object, got {_kind(item['params'])}")
        time = parse_time(item["time"], f"{path}.time") if "time" in item else None
        if "output" in item:
            try:
                values.output_text(item["output"])
            except (TypeError, ValueError) as err:
                raise SessionFileError(f"{path}.output", f"not a json value: {err}") from None
        history.append(Entry(tool=item["tool"], time=time, has_output="output" in item,
                             output=item.get("output")))
    return SessionData(
        identity=_section(raw, "identity"),
        intent=_section(raw, "intent"),
        env=_section(raw, "env"),
        risk=_section(raw, "risk"),
        now=now,
        history=tuple(history),
    )


# ---- the context ------------------------------------------------------------------

@attrs.frozen(kw_only=True)
class Context:
    """The context C of LANGUAGE.md §1, with validated attribute values.

    A section is None when absent; inside a present section an absent key is
    simply missing from the dict. Either way, reading it is *unknown*.
    """
    identity: dict[str, Any] | None
    intent: dict[str, Any] | None
    env: dict[str, Any] | None
    risk: dict[str, Any] | None
    now: Fraction | None
    history: tuple[Entry, ...]
    tags: frozenset[str]
    level: int


def _str(raw: Any, path: str) -> str:
    if not isinstance(raw, str):
        raise InvalidContext(path, f"expected a string, got {_kind(raw)}")
    return values.check_string(raw, path)


def _str_list(raw: Any, path: str) -> tuple[str, ...]:
    if not isinstance(raw, (list, tuple)):
        raise InvalidContext(path, f"expected an array of strings, got {_kind(raw)}")
    return tuple(_str(item, f"{path}[{i}]") for i, item in enumerate(raw))


def _unit(raw: Any, path: str, what: str) -> Decimal:
    if isinstance(raw, bool) or not isinstance(raw, (int, Decimal)):
        raise InvalidContext(path, f"expected a number in [0, 1], got {_kind(raw)}")
    if isinstance(raw, Decimal) and not raw.is_finite():
        raise InvalidContext(path, "expected a finite number in [0, 1]")
    if not 0 <= raw <= 1:
        raise InvalidContext(path, f"{what} must be in [0, 1]")
    return values.validate(values.Prim("decimal"), raw, path)


def _identity(raw: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in IDENTITY_STR_KEYS:
        if key in raw:
            out[key] = _str(raw[key], f"identity.{key}")
    if "scopes" in raw:
        out["scopes"] = _str_list(raw["scopes"], "identity.scopes")
    if "delegation" in raw:
        chain = raw["delegation"]
        if not isinstance(chain, (list, tuple)):
            raise InvalidContext("identity.delegation", f"expected an array, got {_kind(chain)}")
        out["delegated"] = len(chain) > 0
    return out


def _intent(raw: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "text" in raw:
        out["text"] = _str(raw["text"], "intent.text")
    if "entities" in raw:
        out["entities"] = _str_list(raw["entities"], "intent.entities")
    if "tools" in raw:
        out["tools"] = _str_list(raw["tools"], "intent.tools")
    if "score" in raw:
        out["score"] = _unit(raw["score"], "intent.score", "an alignment score")
    return out


def _env(policy: ir.Policy, raw: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for var in policy.env:
        if var.name in raw:
            try:
                out[var.name] = values.validate(var.type, raw[var.name], f"env.{var.name}")
            except values.InvalidValue as err:
                raise InvalidContext(err.path, err.message) from None
    return out


def _risk(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _unit(value, f"risk.{key}", "a risk signal") for key, value in raw.items()}


def output_of(policy: ir.Policy, tool: str) -> ir.Output:
    """The output declaration of a history entry's tool; undeclared = unknown classification."""
    declared = policy.tool(tool)
    if declared is None:
        return ir.Output(none=False, declared=False)
    return declared.output


def is_untrusted(output: ir.Output) -> bool:
    """No `returns` clause (or an undeclared tool) is unknown classification: untrusted (R2)."""
    if output.none:
        return False
    return output.untrusted or not output.declared


def output_level(policy: ir.Policy, output: ir.Output) -> int | None:
    """The label an output contributes; None for `returns none` (not data)."""
    if output.none:
        return None
    if not output.declared:
        return policy.top_level
    return output.level


def derive_context(policy: ir.Policy, data: SessionData) -> Context:
    """Validate attribute values and compute tags and the top label from the history."""
    tags: set[str] = set()
    level = 0
    for entry in data.history:
        output = output_of(policy, entry.tool)
        contributed = output_level(policy, output)
        if contributed is not None:
            level = max(level, contributed)
        if not output.none:
            tags.update(output.tags)
    return Context(
        identity=_identity(data.identity) if data.identity is not None else None,
        intent=_intent(data.intent) if data.intent is not None else None,
        env=_env(policy, data.env) if data.env is not None else None,
        risk=_risk(data.risk) if data.risk is not None else None,
        now=data.now,
        history=data.history,
        tags=frozenset(tags),
        level=level,
    )
