"""The session context the engine decides on (LANGUAGE.md §1, §5.3, §7).

A `SessionContext` holds the facts a condition may read, derived once and
then looked up per decision: identity, intent, env and risk (validated
against the policy; a section absent = its attributes are *unknown*), the
current time, and what the history of executed actions implies — tags, the
top label, counts per tool (with times, for windows), and token indexes of
the recorded outputs for provenance (`aarm_runtime.values.TokenIndex`).

It derives exactly what the reference interpreter derives from a session file
(`aarmc/reference/context.py`), so the two can be run on the same files:
`SessionContext.from_json` checks the file format the same way (raising
`SessionFormatError` with the same JSON path and message) and validates
attribute values the same way (a bad value does not raise: it is kept in
`invalid`, and `decide` answers DENY `invalid-params` after the params).

`record` appends an executed action, updating every derived fact, so an
interceptor can accumulate a session incrementally.

>>> decl = Declarations(outputs={"web.get": (0, True, ())}, top_level=1, env={})
>>> ctx = SessionContext.from_json({"history": [{"tool": "web.get", "output": "see bob@x.example"}]}, decl)
>>> ctx.level, sorted(ctx.tags), ctx.actions
(0, [], 1)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple

from aarm_runtime import values

if TYPE_CHECKING:
    from fractions import Fraction

__all__ = [
    "Declarations",
    "Entry",
    "SessionContext",
    "SessionFormatError",
    "parse_time",
]

SESSION_KEYS = ("identity", "intent", "env", "risk", "now", "history")
HISTORY_KEYS = ("tool", "params", "time", "output")
IDENTITY_STR_KEYS = ("principal", "agent", "service", "session", "role")


class SessionFormatError(ValueError):
    """A malformed session file; `path` is a JSON path (`$.history[0].tool`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class _InvalidContext(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message


class Declarations(NamedTuple):
    """What a context needs from the policy.

    `outputs`: tool → ``(level or None for returns none, untrusted, tags)``;
    a tool not listed has unknown classification (top label, untrusted).
    `env`: declared env attribute → its `values` type.
    """

    outputs: Mapping[str, tuple[int | None, bool, tuple[str, ...]]]
    top_level: int
    env: Mapping[str, Any]


class Entry(NamedTuple):
    """One executed action; `time` in seconds since the epoch, exactly (None = no time)."""

    tool: str
    time: Fraction | None
    has_output: bool
    output: Any = None


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


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?(?:[Zz]|([+-])(\d{2}):(\d{2}))"
)
_EPOCH = 719163  # datetime.date(1970, 1, 1).toordinal()


def parse_time(text: Any, path: str) -> Fraction:
    """An RFC 3339 date-time as exact seconds since the epoch (leap seconds refused).

    >>> parse_time("1970-01-01T01:00:00.5+01:00", "$.now")
    Fraction(1, 2)
    """
    # Imported here: only session files need them, and import time counts for embedders.
    import datetime
    from fractions import Fraction

    if not isinstance(text, str):
        raise SessionFormatError(path, f"expected an RFC 3339 date-time string, got {_kind(text)}")
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise SessionFormatError(path, f"`{text}` is not an RFC 3339 date-time (e.g. `2026-11-26T10:00:00Z`)")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    try:
        date = datetime.date(year, month, day)
    except ValueError:
        raise SessionFormatError(path, f"`{text}` is not a valid calendar date") from None
    if hour > 23 or minute > 59 or second > 59:
        raise SessionFormatError(path, f"`{text}` has an invalid time of day (leap seconds are not accepted)")
    offset = 0
    if m.group(8) is not None:
        off_h, off_m = int(m.group(9)), int(m.group(10))
        if off_h > 23 or off_m > 59:
            raise SessionFormatError(path, f"`{text}` has an invalid UTC offset")
        offset = (off_h * 3600 + off_m * 60) * (1 if m.group(8) == "+" else -1)
    fraction = Fraction(m.group(7)[1:]) / 10 ** (len(m.group(7)) - 1) if m.group(7) else Fraction(0)
    days = date.toordinal() - _EPOCH
    return Fraction(days * 86400 + hour * 3600 + minute * 60 + second - offset) + fraction


def _check_keys(obj: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
    for key in obj:
        if key not in allowed:
            expected = ", ".join(f"`{k}`" for k in allowed)
            raise SessionFormatError(f"{path}", f"unknown key `{key}` (expected {expected})")


def _section(raw: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    if key not in raw:
        return None
    value = raw[key]
    if not isinstance(value, Mapping):
        raise SessionFormatError(f"$.{key}", f"expected an object, got {_kind(value)}")
    return value


def _str(raw: Any, path: str) -> str:
    if not isinstance(raw, str):
        raise _InvalidContext(path, f"expected a string, got {_kind(raw)}")
    # Like the reference, a string outside the alphabet is not an
    # `invalid-params` context value but a failure (`evaluation-error`).
    return values.check_string(raw, path)


def _str_list(raw: Any, path: str) -> tuple[str, ...]:
    if not isinstance(raw, (list, tuple)):
        raise _InvalidContext(path, f"expected an array of strings, got {_kind(raw)}")
    return tuple(_str(item, f"{path}[{i}]") for i, item in enumerate(raw))


def _unit(raw: Any, path: str, what: str) -> Decimal:
    if isinstance(raw, bool) or not isinstance(raw, (int, Decimal)):
        raise _InvalidContext(path, f"expected a number in [0, 1], got {_kind(raw)}")
    if isinstance(raw, Decimal) and not raw.is_finite():
        raise _InvalidContext(path, "expected a finite number in [0, 1]")
    if not 0 <= raw <= 1:
        raise _InvalidContext(path, f"{what} must be in [0, 1]")
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
            raise _InvalidContext("identity.delegation", f"expected an array, got {_kind(chain)}")
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


def _env(declared: Mapping[str, Any], raw: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, t in declared.items():
        if name in raw:
            try:
                out[name] = values.validate(t, raw[name], f"env.{name}")
            except values.InvalidValue as err:
                raise _InvalidContext(err.path, err.message) from None
    return out


def _risk(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _unit(value, f"risk.{key}", "a risk signal") for key, value in raw.items()}


class SessionContext:
    """The facts of one session; read by compiled conditions, grown by `record`."""

    __slots__ = (
        "identity", "intent", "env", "risk", "now", "history", "tags", "level", "invalid", "failure",
        "_decl", "_counts", "_times", "_untrusted_index", "_tool_index", "_intent_index",
    )

    def __init__(
        self,
        declarations: Declarations,
        *,
        identity: Mapping[str, Any] | None = None,
        intent: Mapping[str, Any] | None = None,
        env: Mapping[str, Any] | None = None,
        risk: Mapping[str, Any] | None = None,
        now: Fraction | int | None = None,
    ) -> None:
        """Validate the attribute sections (raw JSON values; None = absent section)."""
        self._decl = declarations
        self.now = now
        self.history: list[Entry] = []
        self.tags: frozenset[str] = frozenset()
        self.level = 0
        self._counts: dict[str, int] = {}
        self._times: dict[str, list[Fraction | None]] = {}
        self._untrusted_index = values.TokenIndex()
        self._tool_index: dict[str, values.TokenIndex] = {}
        self._intent_index: values.TokenIndex | None = None
        self.identity = self.intent = self.env = self.risk = None
        # Context values are validated in the reference's order; the first bad
        # one is what the DENY `invalid-params` record names (`invalid`), or
        # the DENY `evaluation-error` for a value outside the value space
        # (`failure`). Either way no attribute of the context is believed.
        self.invalid: tuple[str, str] | None = None
        self.failure: str | None = None
        try:
            self.identity = _identity(identity) if identity is not None else None
            self.intent = _intent(intent) if intent is not None else None
            self.env = _env(declarations.env, env) if env is not None else None
            self.risk = _risk(risk) if risk is not None else None
        except _InvalidContext as err:
            self.invalid = (err.path, err.message)
        except values.InvalidValue as err:
            self.failure = str(err) or type(err).__name__
        if self.invalid is not None or self.failure is not None:
            self.identity = self.intent = self.env = self.risk = None
        if self.intent is not None and "text" in self.intent:
            self._intent_index = values.TokenIndex([self.intent["text"]])

    @classmethod
    def from_json(cls, raw: Any, declarations: Declarations) -> SessionContext:
        """The context of a LANGUAGE.md §7 session object (parsed with `values.load_json`); None = empty."""
        if raw is None:
            return cls(declarations)
        if not isinstance(raw, Mapping):
            raise SessionFormatError("$", f"a session must be an object, got {_kind(raw)}")
        _check_keys(raw, SESSION_KEYS, "$")
        now = parse_time(raw["now"], "$.now") if "now" in raw else None
        history_raw = raw.get("history", [])
        if not isinstance(history_raw, (list, tuple)):
            raise SessionFormatError("$.history", f"expected an array, got {_kind(history_raw)}")
        entries = []
        for i, item in enumerate(history_raw):
            path = f"$.history[{i}]"
            if not isinstance(item, Mapping):
                raise SessionFormatError(path, f"expected an object, got {_kind(item)}")
            _check_keys(item, HISTORY_KEYS, path)
            if "tool" not in item:
                raise SessionFormatError(path, "a history entry needs a `tool`")
            if not isinstance(item["tool"], str):
                raise SessionFormatError(f"{path}.tool", f"expected a string, got {_kind(item['tool'])}")
            if "params" in item and not isinstance(item["params"], Mapping):
                raise SessionFormatError(f"{path}.params", f"expected an object, got {_kind(item['params'])}")
            time = parse_time(item["time"], f"{path}.time") if "time" in item else None
            if "output" in item:
                try:
                    values.output_text(item["output"])
                except (TypeError, ValueError) as err:
                    raise SessionFormatError(f"{path}.output", f"not a json value: {err}") from None
            entries.append(Entry(tool=item["tool"], time=time, has_output="output" in item, output=item.get("output")))
        ctx = cls(
            declarations,
            identity=_section(raw, "identity"),
            intent=_section(raw, "intent"),
            env=_section(raw, "env"),
            risk=_section(raw, "risk"),
            now=now,
        )
        for entry in entries:
            ctx._append(entry)
        return ctx

    def record(self, tool: str, *, time: Fraction | int | None = None, output: Any = None,
               has_output: bool | None = None) -> None:
        """Add an executed action (its output, if any, enters tags, level and provenance)."""
        if has_output is None:
            has_output = output is not None
        if has_output:
            values.output_text(output)  # refuse a non-JSON output before anything changes
        from fractions import Fraction

        self._append(Entry(tool=tool, time=None if time is None else Fraction(time), has_output=has_output,
                           output=output))

    def _append(self, entry: Entry) -> None:
        self.history.append(entry)
        level, untrusted, tags = self._decl.outputs.get(entry.tool, (self._decl.top_level, True, ()))
        if level is not None:
            if level > self.level:
                self.level = level
            if tags:
                self.tags = self.tags.union(tags)
        self._counts[entry.tool] = self._counts.get(entry.tool, 0) + 1
        self._times.setdefault(entry.tool, []).append(entry.time)
        if entry.has_output:
            text = values.output_text(entry.output)
            if untrusted:
                self._untrusted_index.add(text)
            index = self._tool_index.get(entry.tool)
            if index is None:
                index = self._tool_index[entry.tool] = values.TokenIndex()
            index.add(text)

    # ---- what conditions read ------------------------------------------------------------

    @property
    def actions(self) -> int:
        return len(self.history)

    def count(self, tools: tuple[str, ...] | frozenset[str]) -> int:
        counts = self._counts
        return sum(counts.get(t, 0) for t in tools) if counts else 0

    def used(self, tools: tuple[str, ...] | frozenset[str]) -> bool:
        counts = self._counts
        return any(t in counts for t in tools) if counts else False

    def count_within(self, tools: tuple[str, ...] | frozenset[str], within_s: int) -> int | frozenset[str]:
        """Executed actions of `tools` with time in (now - D, now]; else the set of missing fields."""
        missing: set[str] = set()
        if self.now is None:
            missing.add("now")
        times = self._times
        selected: list[Fraction | None] = []
        for t in tools:
            got = times.get(t)
            if got:
                selected.extend(got)
        if any(time is None for time in selected):
            missing.add("history.time")
        if missing:
            return frozenset(missing)
        start = self.now - within_s
        now = self.now
        return sum(1 for time in selected if start < time <= now)

    def from_untrusted(self, token: values.Token) -> bool:
        return self._untrusted_index.contains(token)

    def from_tools(self, token: values.Token, tools: tuple[str, ...] | frozenset[str]) -> bool:
        index = self._tool_index
        for t in tools:
            got = index.get(t)
            if got is not None and got.contains(token):
                return True
        return False

    def in_intent_text(self, token: values.Token) -> bool:
        index = self._intent_index
        return index is not None and index.contains(token)
