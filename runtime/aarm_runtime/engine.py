"""The decision engine: a verified artifact, decided fast, exactly as the reference does.

>>> # engine = Engine.load("policy.aarmc", trusted_keys=[load_verify_key("author.pub")])
>>> # decision = engine.decide({"tool": "email.send", "params": {...}}, engine.context(session_json))

`decide` implements LANGUAGE.md §5 with the reference interpreter's choices
(`aarmc/reference/decide.py`): same decision, rules, reason, message,
fields, params, approvers, timeout, tool and wrapper. It is fast because of
how the table is read, not because anything is skipped that could matter:

- dispatch by tool name (a dict), params validated by per-tool fast paths
  that fall back to `values.validate_params` whenever they are unsure (so
  errors, and every value, are exactly the reference's);
- rules pre-grouped by priority, evaluated from the highest group down, and
  the walk stops after the first group that has a true rule: no rule below
  it can be among the deciding rules or change the outcome in any
  assignment of the unknown ones. The walk continues (to count them
  exactly) only when the unknown rules could exceed the reference's limit
  `MAX_UNKNOWN_RULES`, where the record names all of them;
- equality indexes (value → candidate rules) and shared sub-conditions
  evaluated once per decision (`aarm_runtime.program`);
- decision records for outcomes without computed params are built once and
  reused (they are immutable).

One deliberate difference: the reference evaluates every rule of the tool,
so a rule below the deciding priority that *fails* to evaluate still turns
the decision into DENY `evaluation-error`. A failure is only reachable from a
condition the type checker would refuse (LANGUAGE.md §4: no well-typed
condition reads an absent param), and compiled artifacts come from checked
policies, so this engine does not evaluate those rules. A failure in any
rule it does evaluate is a DENY `evaluation-error` as in the reference.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from aarm_runtime import artifact as fmt
from aarm_runtime import keys, values
from aarm_runtime.context import Declarations, SessionContext
from aarm_runtime.decision import ALLOW, DEFER, DENY, MODIFY, STEP_UP, Decision
from aarm_runtime.program import Program, Unknown, children, describe, equal, failure_message

__all__ = ["ActionFormatError", "Engine", "DEFAULT_TIMEOUT_S", "MAX_UNKNOWN_RULES", "MAX_WRAP_DEPTH"]

# The reference interpreter's constants (aarmc/reference/decide.py); the
# differential tests hold the two to the same values.
DEFAULT_TIMEOUT_S = 300
MAX_UNKNOWN_RULES = 16
MAX_WRAP_DEPTH = 4

ACTION_KEYS = ("tool", "params")

_EFFECT_DECISION = {"deny": DENY, "allow": ALLOW, "modify": MODIFY, "step_up": STEP_UP, "defer": DEFER}
_EFFECT_VERB = {
    "deny": "denied",
    "allow": "allowed",
    "modify": "modified",
    "step_up": "step-up required",
    "defer": "deferred",
    "forbid": "forbidden",
}
# Nodes cheap enough that memoising them would cost more than evaluating them twice.
_TRIVIAL = frozenset({fmt.LIT, fmt.LABEL, fmt.PARAM, fmt.VAR, fmt.CTX, fmt.FIELD, fmt.HAS, fmt.USED})
_CACHE_LIMIT = 4096
_PARSE_CACHE = 4096
_PARSED: dict[str, dict[str, Any]] = {"email": {}, "url": {}}
_INT_FAST = 10**18
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ActionFormatError(ValueError):
    """A malformed action (not an object, no string `tool`, unknown keys); `path` is a JSON path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


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


def read_action(raw: Any) -> tuple[str, Any]:
    """(tool, raw params) of an action object; params default to `{}` and are not checked here."""
    if type(raw) is dict:
        tool = raw.get("tool")
        if type(tool) is str and len(raw) <= 2 and (len(raw) == 1 or "params" in raw):
            return tool, raw.get("params", {})
    if not isinstance(raw, Mapping):
        raise ActionFormatError("$", f"an action must be an object, got {_kind(raw)}")
    for key in raw:
        if key not in ACTION_KEYS:
            expected = ", ".join(f"`{k}`" for k in ACTION_KEYS)
            raise ActionFormatError("$", f"unknown key `{key}` (expected {expected})")
    if "tool" not in raw:
        raise ActionFormatError("$", "an action needs a `tool`")
    tool = raw["tool"]
    if not isinstance(tool, str):
        raise ActionFormatError("$.tool", f"expected a string, got {_kind(tool)}")
    return tool, raw.get("params", {})


# ---- plans: the artifact's tables, ready to run ---------------------------------------


class _Rule:
    __slots__ = ("id", "effect", "priority", "index", "cond", "because", "approvers", "timeout_s",
                 "assignments", "may_be_unknown", "message")

    def __init__(self, entry: fmt.RuleEntry, program: Program) -> None:
        self.id = entry.id
        self.effect = entry.effect
        self.priority = entry.priority
        self.index = entry.index
        self.cond = None if entry.condition is None else program.closure(entry.condition)
        self.because = entry.because
        self.approvers = entry.approvers
        self.timeout_s = entry.timeout_s
        self.assignments = tuple((name, program.closure(node)) for name, node in entry.assignments)
        self.may_be_unknown = entry.condition is not None and program.may_be_unknown[entry.condition]
        self.message = entry.because if entry.because else f"{_EFFECT_VERB[entry.effect]} by rule `{entry.id}`"


class _Group:
    __slots__ = ("priority", "rules", "key", "lookup", "unindexed", "unknown_below")

    def __init__(self, group: fmt.Group, rule: Any, program: Program) -> None:
        self.priority = group.priority
        self.rules = tuple(rule(i) for i in group.rules)
        self.key = None
        self.lookup: dict[Any, tuple[_Rule, ...]] = {}
        self.unindexed = self.rules
        self.unknown_below = 0
        if group.index is not None:
            self.key = program.closure(group.index.key)
            indexed = {pos for _, targets in group.index.entries for pos in targets}
            unindexed = [r for r in self.rules if r.index not in indexed]
            self.unindexed = tuple(unindexed)
            for value, targets in group.index.entries:
                chosen = set(targets)
                # Candidates in source order: the key's rules merged with the always-candidates.
                self.lookup[value] = tuple(r for r in self.rules if r.index in chosen or r.index not in indexed)

    def candidates(self, p: dict, c: Any, m: dict) -> tuple[_Rule, ...]:
        key = self.key
        if key is None:
            return self.rules
        try:
            k = key(p, c, m)
        except Exception:  # noqa: BLE001 - no key, no pruning: every rule is evaluated
            return self.rules
        t = type(k)
        if t is str or t is int:
            return self.lookup.get(k, self.unindexed)
        return self.rules


class _Unsure(Exception):
    """The fast validator cannot decide: ask `values.validate_params`."""


_K_OTHER, _K_STR, _K_INT = 0, 1, 2


def _kind_code(decl: fmt.ParamDecl) -> int:
    t = decl.type.inner if isinstance(decl.type, values.OptT) else decl.type
    if t == values.Prim("str"):
        return _K_STR
    if t == values.Prim("int"):
        return _K_INT
    return _K_OTHER


def _converter(decl: fmt.ParamDecl, field: str) -> Any:
    """A one-argument validator equal to `values.validate(type, v, field)`, raising `_Unsure` for the rare cases."""
    t = decl.type.inner if isinstance(decl.type, values.OptT) else decl.type
    kind = t.name if isinstance(t, values.Prim) else None
    if kind == "str":
        check = values.check_string

        def conv_str(v: Any) -> Any:
            if type(v) is str:
                return check(v, field)
            raise _Unsure
        return conv_str
    if kind == "int":
        def conv_int(v: Any) -> Any:
            if type(v) is int and -_INT_FAST < v < _INT_FAST:
                return v
            raise _Unsure
        return conv_int
    if kind in ("email", "url"):
        parse = values.parse_email if kind == "email" else values.parse_url
        # Parsing is pure and the parsed values are immutable, so the same
        # address (agents send to the same few recipients) is parsed once per
        # process, whichever tool or param it arrives in. Only successful
        # parses are kept (an error names the param); the cache is bounded.
        seen = _PARSED[kind]

        def conv_parsed(v: Any) -> Any:
            if type(v) is str:
                got = seen.get(v)
                if got is None:
                    got = parse(v, field)
                    if len(seen) >= _PARSE_CACHE:
                        seen.clear()
                    seen[v] = got
                return got
            raise _Unsure
        return conv_parsed
    if kind == "bool":
        def conv_bool(v: Any) -> Any:
            if type(v) is bool:
                return v
            raise _Unsure
        return conv_bool
    if isinstance(t, values.EnumT):
        allowed = frozenset(t.values)

        def conv_enum(v: Any) -> Any:
            if type(v) is str and v in allowed:
                return v
            raise _Unsure
        return conv_enum
    validate = values.validate
    return lambda v: validate(t, v, field)


class _Tool:
    """One tool's decision plan: validation, forbid rules, groups by priority, cached records."""

    __slots__ = ("name", "schema", "fields", "declared", "wraps", "forbid", "groups", "default_decision", "cache",
                 "single", "fast_ok")

    def __init__(self, entry: fmt.ToolEntry, rule: Any, program: Program, posture: str) -> None:
        self.name = entry.name
        self.schema = [d.spec() for d in entry.params]
        fields = []
        fast_ok = True
        for d, spec in zip(entry.params, self.schema):
            if not _IDENTIFIER.fullmatch(d.name):
                # `values.validate_params` names such params in brackets: always take its path.
                fast_ok = False
                continue
            inner = d.type.inner if isinstance(d.type, values.OptT) else d.type
            # The reference validates a default on every call; it is the same value every time.
            default = values.validate(inner, spec.default, f"params.{d.name}") \
                if spec.has_default and spec.default is not None else None
            fields.append((d.name, _kind_code(d), _converter(d, f"params.{d.name}"), default, spec.may_be_absent))
        self.fields = tuple(fields)
        self.fast_ok = fast_ok
        self.declared = frozenset(d.name for d in entry.params)
        self.wraps = entry.wraps
        self.forbid = _Group(entry.forbid, rule, program)
        self.groups = tuple(_Group(g, rule, program) for g in entry.groups)
        below = 0
        for g in reversed(self.groups):
            g.unknown_below = below
            below += sum(1 for r in g.rules if r.may_be_unknown)
        self.default_decision = Decision(
            decision=posture, rules=(), reason="default",
            message=f"no rule decides `{entry.name}`: the default posture is {posture}", tool=entry.name,
        )
        self.cache: dict[tuple, Decision] = {}
        self.single: dict[int, Decision] = {}

    def validate(self, raw: Any, path: str = "params") -> dict[str, Any]:
        """`values.validate_params(self.schema, raw, path)`, with fast paths for the common types."""
        if path == "params":
            try:
                return self.fast(raw)
            except (_Unsure, values.InvalidValue):
                pass
        return values.validate_params(self.schema, raw, path)

    def fast(self, raw: Any) -> dict[str, Any]:
        """Validated params, or `_Unsure`; an `InvalidValue` it raises is the one `validate_params` raises."""
        if type(raw) is not dict or not self.fast_ok or not raw.keys() <= self.declared:
            raise _Unsure
        out: dict[str, Any] = {}
        get = raw.get
        for name, kind, conv, default, may_be_absent in self.fields:
            v = get(name)
            if v is None:
                if default is not None:
                    out[name] = default
                elif not may_be_absent:
                    raise _Unsure
            # Inline the two commonest checks: an ASCII string is always inside
            # the alphabet `values.check_string` enforces; an int of fewer than
            # 19 digits is always within the digit limit.
            elif kind == _K_STR and type(v) is str and v.isascii():
                out[name] = v
            elif kind == _K_INT and type(v) is int and -_INT_FAST < v < _INT_FAST:
                out[name] = v
            else:
                out[name] = conv(v)
        return out


# ---- outcomes (reference: decide.py "step 4: resolve") -----------------------------------


class _Outcome:
    __slots__ = ("effect", "reason", "rules", "params", "approvers", "timeout_s", "message", "fields", "_key")

    def __init__(self, effect: str, reason: str, rules: tuple[_Rule, ...] = (), params: dict | None = None,
                 approvers: tuple[str, ...] = (), timeout_s: int | None = None, message: str = "",
                 fields: frozenset[str] = frozenset()) -> None:
        self.effect = effect
        self.reason = reason
        self.rules = rules
        self.params = params
        self.approvers = approvers
        self.timeout_s = timeout_s
        self.message = message
        self.fields = fields
        self._key = None

    @property
    def key(self) -> tuple:
        if self._key is None:
            if self.reason == "absent-context":
                params: Any = ("unknown", tuple(sorted(self.fields)))
            elif self.params is None:
                params = None
            else:
                params = values.canonical_json(self.params)
            self._key = (self.effect, params, frozenset(self.approvers), self.timeout_s)
        return self._key


def _messages(rules: Sequence[_Rule]) -> str:
    return "; ".join(r.message for r in rules)


def _ids(rules: Sequence[_Rule]) -> str:
    return ", ".join(f"`{r.id}`" for r in rules)


def _min_timeout(rules: Sequence[_Rule]) -> int:
    timeouts = [r.timeout_s for r in rules if r.timeout_s is not None]
    return min(timeouts) if timeouts else DEFAULT_TIMEOUT_S


def _source_order(rules: Sequence[_Rule]) -> tuple[_Rule, ...]:
    return tuple(sorted(set(rules), key=lambda r: r.index))


def _resolve_at(tool: _Tool, at_top: tuple[_Rule, ...], params: dict, assigned: Mapping[_Rule, tuple],
                posture: str) -> _Outcome:
    """Step 4 for the rules true at the top priority (all of one priority, in source order)."""
    if not at_top:
        return _Outcome(effect=posture, reason="default", message=tool.default_decision.message)
    effects = sorted({r.effect for r in at_top})
    if len(effects) > 1:
        return _Outcome(effect=DEFER, reason="conflict", rules=at_top, timeout_s=_min_timeout(at_top),
                        message=f"rules {_ids(at_top)} conflict at priority {at_top[0].priority} "
                                f"({', '.join(effects)})")
    effect = effects[0]
    if effect == "modify":
        return _compose(at_top, params, assigned)
    if effect == "step_up":
        approvers: list[str] = []
        for r in at_top:
            approvers.extend(a for a in r.approvers if a not in approvers)
        return _Outcome(effect=STEP_UP, reason="rule", rules=at_top, approvers=tuple(approvers),
                        timeout_s=_min_timeout(at_top), message=_messages(at_top))
    if effect == "defer":
        return _Outcome(effect=DEFER, reason="rule", rules=at_top, timeout_s=_min_timeout(at_top),
                        message=_messages(at_top))
    return _Outcome(effect=_EFFECT_DECISION[effect], reason="rule", rules=at_top, message=_messages(at_top))


def _compose(modifies: tuple[_Rule, ...], params: dict, assigned: Mapping[_Rule, tuple]) -> _Outcome:
    writes: dict[str, list[tuple[_Rule, Any]]] = {}
    for rule in modifies:
        for name, value in assigned[rule]:
            writes.setdefault(name, []).append((rule, value))
    conflicting: list[_Rule] = []
    conflict_params: list[str] = []
    unknown_rules: list[_Rule] = []
    unknown_fields: set[str] = set()
    new = dict(params)
    for name, candidates in writes.items():
        known = [(r, v) for r, v in candidates if type(v) is not Unknown]
        for r, v in candidates:
            if type(v) is Unknown:
                unknown_rules.append(r)
                unknown_fields.update(v.fields)
        if any(not equal(v, known[0][1]) for _, v in known[1:]):
            conflicting.extend(r for r, _ in candidates)
            conflict_params.append(name)
        elif known:
            new[name] = known[0][1]
    if conflicting:
        names = ", ".join(f"`{n}`" for n in conflict_params)
        rules = _source_order(conflicting)
        return _Outcome(effect=DEFER, reason="conflict", rules=rules, timeout_s=_min_timeout(rules),
                        message=f"modify rules {_ids(rules)} assign different values to {names}")
    if unknown_rules:
        return _Outcome(effect=MODIFY, reason="absent-context", rules=_source_order(unknown_rules),
                        fields=frozenset(unknown_fields))
    return _Outcome(effect=MODIFY, reason="rule", rules=modifies, params=new, message=_messages(modifies))


def _subsets(items: Sequence[_Rule]):
    n = len(items)
    for mask in range(2**n):
        yield mask, tuple(u for i, u in enumerate(items) if mask >> i & 1)


def _resolve_unknowns(tool: _Tool, levels: list[tuple[int, list[_Rule], list[_Rule]]], all_unknown: list[_Rule],
                      status: Mapping[_Rule, Unknown], params: dict, assigned: Mapping[_Rule, tuple],
                      posture: str) -> _Outcome:
    """Step 5 (R3a), exactly the reference's enumeration of 2^k assignments, computed per priority.

    `levels` are the priorities that can decide, highest first: (priority,
    true rules, unknown rules); only the last may have true rules, and then
    no lower rule can decide in any assignment. An assignment's outcome is
    decided by its highest level with a true rule, so the outcomes of all
    2^k assignments are those of each level's own subsets (plus the
    default when no rule is true), and an unknown rule matters exactly when
    flipping it changes the outcome of some assignment.
    """

    def fields_of(rules: Sequence[_Rule]) -> frozenset[str]:
        return frozenset().union(*(status[r].fields for r in rules))

    if len(all_unknown) > MAX_UNKNOWN_RULES:
        rules = _source_order(all_unknown)
        return _Outcome(effect=DEFER, reason="absent-context", rules=rules, fields=fields_of(rules))
    has_true = bool(levels) and bool(levels[-1][1])
    base = _resolve_at(tool, tuple(levels[-1][1]), params, assigned, posture) if has_true \
        else _resolve_at(tool, (), params, assigned, posture)
    reachable: list[_Outcome] = [base]
    matter: set[_Rule] = set()
    # Outcomes reachable with every rule of this level and above false.
    below_keys = {base.key}
    for priority, true_rules, unknown in reversed(levels):
        outcomes: dict[int, _Outcome] = {}
        for mask, chosen in _subsets(unknown):
            chosen_all = _source_order(list(true_rules) + list(chosen))
            if chosen_all:
                outcomes[mask] = _resolve_at(tool, chosen_all, params, assigned, posture)
        for i, u in enumerate(unknown):
            bit = 1 << i
            for mask in range(2 ** len(unknown)):
                if mask & bit:
                    continue
                with_u = outcomes[mask | bit].key
                without = outcomes.get(mask)
                if without is not None:
                    if without.key != with_u:
                        matter.add(u)
                        break
                elif below_keys != {with_u}:
                    matter.add(u)
                    break
        level_outcomes = list(outcomes.values())
        reachable.extend(level_outcomes)
        if true_rules:
            below_keys = {o.key for o in level_outcomes}
        else:
            below_keys |= {o.key for o in level_outcomes}
    if len({o.key for o in reachable}) == 1:
        return base
    unknown_values = [o for o in reachable if o.reason == "absent-context"]
    rules = _source_order(list(matter) + [r for o in unknown_values for r in o.rules])
    fields = fields_of(list(matter)).union(*(o.fields for o in unknown_values))
    return _Outcome(effect=DEFER, reason="absent-context", rules=rules, fields=fields)


# ---- the engine ------------------------------------------------------------------------


class Engine:
    """A loaded, verified policy artifact; `decide` is pure and thread-safe.

    Loading verifies and decodes the whole artifact (and compiles every
    regular expression), so a bad artifact is refused before anything is
    decided. A tool's decision plan (its closures, indexes and cached
    records) is built on the first decision for that tool, or for every tool
    at once by `prepare`.
    """

    def __init__(self, art: fmt.Artifact) -> None:
        self.artifact = art
        self.policy = art.policy
        self.version = art.version
        self.default = art.default
        self._program = Program(art.nodes, _shared_nodes(art))
        self._rule_entries = art.rules
        self._rules: list[_Rule | None] = [None] * len(art.rules)
        self._entries = {t.name: t for t in art.tools}
        self._plans: dict[str, _Tool] = {}
        self._building = threading.Lock()
        outputs: dict[str, tuple[int | None, bool, tuple[str, ...]]] = {}
        for t in art.tools:
            o = t.output
            if o.none:
                outputs[t.name] = (None, False, ())
            elif not o.declared:
                outputs[t.name] = (art.top_level, True, o.tags)
            else:
                outputs[t.name] = (o.level, o.untrusted, o.tags)
        self.declarations = Declarations(outputs=outputs, top_level=art.top_level, env=dict(art.env))
        self._empty = SessionContext(self.declarations)
        self._unknown_tool: dict[str, Decision] = {}

    @classmethod
    def load(
        cls,
        source: str | os.PathLike[str] | bytes,
        trusted_keys: Mapping[bytes, keys.VerifyKey] | Sequence[keys.VerifyKey] = (),
        *,
        unsafe_unsigned: bool = False,
    ) -> Engine:
        """Verify and load an artifact (a path or its bytes); raise `ArtifactError` on anything else.

        ``unsafe_unsigned=True`` accepts an unsigned or unverifiable artifact:
        development only, never in production.
        """
        data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) \
            else fmt.read_artifact_file(source)
        return cls(fmt.load_artifact(data, trusted_keys, unsafe_unsigned=unsafe_unsigned))

    @property
    def tools(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def prepare(self) -> Engine:
        """Build every tool's decision plan now rather than on its first decision."""
        for name in self._entries:
            self._plan(name)
        return self

    def _rule(self, i: int) -> _Rule:
        got = self._rules[i]
        if got is None:
            got = self._rules[i] = _Rule(self._rule_entries[i], self._program)
        return got

    def _plan(self, name: str) -> _Tool | None:
        got = self._plans.get(name)
        if got is None:
            entry = self._entries.get(name)
            if entry is None:
                return None
            # Building shares the program's closure cache (and its quantifier
            # slots) across tools: one builder at a time.
            with self._building:
                got = self._plans.get(name)
                if got is None:
                    got = self._plans[name] = _Tool(entry, self._rule, self._program, self.default)
        return got

    def context(self, session: Any = None) -> SessionContext:
        """The context of a LANGUAGE.md §7 session object (None = empty session)."""
        return SessionContext.from_json(session, self.declarations)

    def decide(self, action: Mapping, context: SessionContext | Mapping | None = None) -> Decision:
        """Decide one action; every problem other than a malformed action is a DENY with its reason."""
        tool_name, raw = read_action(action)
        if context is None:
            context = self._empty
        elif type(context) is not SessionContext:
            context = context if isinstance(context, SessionContext) else self.context(context)
        try:
            return self._decide(tool_name, raw, context)
        except Exception as err:  # noqa: BLE001 - step 7: never propagate, never allow
            return Decision(decision=DENY, rules=(), reason="evaluation-error", message=f"evaluation failed: {err}",
                            tool=tool_name)

    # ---- step 1 -------------------------------------------------------------------

    def _unknown(self, name: str, wrapper: str | None) -> Decision:
        if wrapper is None:
            got = self._unknown_tool.get(name)
            if got is not None:
                return got
        d = Decision(decision=DENY, rules=(), reason="unknown-tool", message=f"unknown tool `{name}`", tool=name,
                     wrapper=wrapper)
        if wrapper is None and len(self._unknown_tool) < _CACHE_LIMIT:
            self._unknown_tool[name] = d
        return d

    def _resolve_tool(self, name: str, raw: Any) -> tuple[_Tool, dict, str | None] | Decision:
        path = "params"
        wrapper: str | None = None
        for depth in range(MAX_WRAP_DEPTH + 1):
            tool = self._plan(name)
            if tool is None:
                return self._unknown(name, wrapper)
            try:
                params = tool.validate(raw, path)
            except values.InvalidValue as err:
                return _invalid(f"invalid params: {err}", name, wrapper)
            if tool.wraps is None:
                return tool, params, wrapper
            if depth == MAX_WRAP_DEPTH:
                return _invalid(f"meta-tools nest more than {MAX_WRAP_DEPTH} levels deep", name, wrapper)
            wrapper = wrapper or tool.name
            name_param, args_param = tool.wraps
            inner = params.get(name_param)
            if not isinstance(inner, str):
                return _invalid(f"invalid params: {path}.{name_param}: the wrapped tool's name must be a string",
                                name, wrapper)
            args = params.get(args_param)
            if not isinstance(args, Mapping):
                return _invalid(f"invalid params: {path}.{args_param}: the wrapped tool's params must be an object",
                                name, wrapper)
            name, raw, path = inner, values.to_json_value(args), f"{path}.{args_param}"
        raise AssertionError("unreachable: the loop returns at MAX_WRAP_DEPTH")

    # ---- steps 2 to 7 -----------------------------------------------------------------

    def _decide(self, tool_name: str, raw: Any, c: SessionContext) -> Decision:
        tool = self._plans.get(tool_name) or self._plan(tool_name)
        if tool is None:
            return self._unknown(tool_name, None)
        wrapper = None
        if tool.wraps is None:
            try:
                p = tool.fast(raw)
            except _Unsure:
                try:
                    p = values.validate_params(tool.schema, raw, "params")
                except values.InvalidValue as err:
                    return _invalid(f"invalid params: {err}", tool_name, None)
            except values.InvalidValue as err:
                # The fast path raises only what `validate_params` raises for the same value.
                return _invalid(f"invalid params: {err}", tool_name, None)
        else:
            resolved = self._resolve_tool(tool_name, raw)
            if type(resolved) is Decision:
                return resolved
            tool, p, wrapper = resolved
        if c.invalid is not None:
            return _invalid(f"invalid context: `{c.invalid[0]}`: {c.invalid[1]}", tool.name, wrapper)
        if c.failure is not None:
            return Decision(decision=DENY, rules=(), reason="evaluation-error",
                            message=f"evaluation failed: {c.failure}", tool=tool_name)
        m: dict = {}

        # The common case, all rules true or false and no modify deciding: the
        # first group with a true rule decides. Anything else (an unknown, a
        # failure, a deciding modify, too many rules that may be unknown)
        # takes the general algorithm, which starts over with the same memo.
        forbid = tool.forbid
        if forbid.rules:
            matched = None
            for r in (forbid.rules if forbid.key is None else forbid.candidates(p, c, m)):
                f = r.cond
                if f is None:
                    v: Any = True
                else:
                    try:
                        v = f(p, c, m)
                    except Exception:  # noqa: BLE001
                        return self._general(tool, p, c, m, wrapper)
                if v is True:
                    if matched is None:
                        matched = [r]
                    else:
                        matched.append(r)
                elif v is not False:
                    return self._general(tool, p, c, m, wrapper)
            if matched is not None:
                return self._forbidden(tool, matched, wrapper)
        for g in tool.groups:
            hit = None
            for r in (g.rules if g.key is None else g.candidates(p, c, m)):
                f = r.cond
                if f is None:
                    v = True
                else:
                    try:
                        v = f(p, c, m)
                    except Exception:  # noqa: BLE001
                        return self._general(tool, p, c, m, wrapper)
                if v is True:
                    if r.assignments:
                        return self._general(tool, p, c, m, wrapper)
                    if hit is None:
                        hit = r
                    elif type(hit) is list:
                        hit.append(r)
                    else:
                        hit = [hit, r]
                elif v is not False:
                    return self._general(tool, p, c, m, wrapper)
            if hit is not None:
                if g.unknown_below > MAX_UNKNOWN_RULES:
                    return self._general(tool, p, c, m, wrapper)
                if type(hit) is _Rule and wrapper is None:
                    got = tool.single.get(hit.index)
                    if got is None:
                        got = _record(tool, None, _resolve_at(tool, (hit,), p, {}, self.default))
                        tool.single[hit.index] = got
                    return got
                return self._cached(tool, [hit] if type(hit) is _Rule else hit, wrapper, p, {})
        if wrapper is None:
            return tool.default_decision
        return _record(tool, wrapper, _resolve_at(tool, (), p, {}, self.default))

    def _general(self, tool: _Tool, p: dict, c: SessionContext, m: dict, wrapper: str | None) -> Decision:
        """Steps 2 to 6 in full: unknowns (R3a), failures, modify composition and re-check."""
        # Step 2: forbid.
        if tool.forbid.rules:
            matched, failed = _forbids(tool, p, c, m)
            if matched:
                return self._forbidden(tool, matched, wrapper)
            if failed:
                return _evaluation_error(failed, tool, wrapper)

        # Step 3: rules by priority, highest first.
        top: list[_Rule] = []
        unknown: list[_Rule] = []
        status: dict[_Rule, Unknown] = {}
        assigned: dict[_Rule, tuple] = {}
        failed_cond: list[tuple[_Rule, str]] = []
        failed_value: list[tuple[_Rule, str]] = []
        levels: list[tuple[int, list[_Rule], list[_Rule]]] = []
        decided = False
        for g in tool.groups:
            level_true: list[_Rule] = []
            level_unknown: list[_Rule] = []
            for r in g.candidates(p, c, m):
                f = r.cond
                if f is None:
                    v: Any = True
                else:
                    try:
                        v = f(p, c, m)
                    except Exception as err:  # noqa: BLE001
                        failed_cond.append((r, failure_message(err)))
                        v = None
                    else:
                        if v is not True and v is not False and type(v) is not Unknown:
                            failed_cond.append((r, f"a condition evaluated to {describe(v)}, not a boolean"))
                            v = None
                if v is False:
                    continue
                if v is True:
                    if not decided:
                        level_true.append(r)
                elif v is not None:
                    status[r] = v
                    unknown.append(r)
                    if not decided:
                        level_unknown.append(r)
                if r.assignments:
                    pairs = []
                    for name, fv in r.assignments:
                        try:
                            pairs.append((name, fv(p, c, m)))
                        except Exception as err:  # noqa: BLE001
                            failed_value.append((r, failure_message(err)))
                    assigned[r] = tuple(pairs)
            if not decided:
                if level_true or level_unknown:
                    levels.append((g.priority, level_true, level_unknown))
                if level_true:
                    decided = True
                    top = level_true
            if decided and not failed_cond and not failed_value \
                    and len(unknown) + g.unknown_below <= MAX_UNKNOWN_RULES:
                break
        if failed_cond or failed_value:
            failed = sorted(failed_cond, key=lambda rf: rf[0].index) + sorted(failed_value, key=lambda rf: rf[0].index)
            return _evaluation_error(failed, tool, wrapper)

        # Steps 4 and 5.
        if not unknown:
            outcome = _resolve_at(tool, tuple(top), p, assigned, self.default)
        else:
            outcome = _resolve_unknowns(tool, levels, unknown, status, p, assigned, self.default)
        if outcome.reason == "absent-context":
            rules_named = outcome.rules
            fields = tuple(sorted(outcome.fields))
            return Decision(decision=DEFER, rules=tuple(r.id for r in rules_named), reason="absent-context",
                            message=f"the decision depends on absent context ({', '.join(fields)})"
                                    f" through rules {_ids(rules_named)}",
                            fields=fields, timeout_s=_min_timeout(rules_named), tool=tool.name, wrapper=wrapper)
        if outcome.effect != MODIFY:
            return _record(tool, wrapper, outcome)
        return self._modify(tool, outcome, c, wrapper)

    def _cached(self, tool: _Tool, top: list[_Rule], wrapper: str | None, p: dict,
                assigned: Mapping[_Rule, tuple]) -> Decision:
        key = (wrapper, *[r.index for r in top])
        got = tool.cache.get(key)
        if got is None:
            got = _record(tool, wrapper, _resolve_at(tool, tuple(top), p, assigned, self.default))
            if len(tool.cache) < _CACHE_LIMIT:
                tool.cache[key] = got
        return got

    def _forbidden(self, tool: _Tool, matched: list[_Rule], wrapper: str | None) -> Decision:
        key = ("forbid", wrapper, *[r.index for r in matched])
        got = tool.cache.get(key)
        if got is None:
            got = Decision(decision=DENY, rules=tuple(r.id for r in matched), reason="forbidden",
                           message=_messages(matched), tool=tool.name, wrapper=wrapper)
            if len(tool.cache) < _CACHE_LIMIT:
                tool.cache[key] = got
        return got

    def _modify(self, tool: _Tool, outcome: _Outcome, c: SessionContext, wrapper: str | None) -> Decision:
        """Step 6: a MODIFY's new params are validated again and the forbids run on them."""
        assert outcome.params is not None
        modify_ids = tuple(r.id for r in outcome.rules)
        try:
            new_params = values.validate_params(tool.schema, values.to_json_value(outcome.params))
        except values.InvalidValue as err:
            return _invalid(f"modify {_ids(outcome.rules)} produces invalid params: {err}", tool.name, wrapper,
                            modify_ids)
        matched, failed = _forbids(tool, new_params, c, {})
        if matched:
            both = _source_order(list(outcome.rules) + matched)
            return Decision(decision=DENY, rules=tuple(r.id for r in both), reason="forbidden",
                            message=f"modify {_ids(outcome.rules)} produces params forbidden by {_ids(matched)}: "
                                    f"{_messages(matched)}",
                            tool=tool.name, wrapper=wrapper)
        if failed:
            return _evaluation_error(failed, tool, wrapper)
        return Decision(decision=MODIFY, rules=modify_ids, reason="rule", message=outcome.message,
                        params=values.to_jsonable(new_params), tool=tool.name, wrapper=wrapper)


def _forbids(tool: _Tool, p: dict, c: Any, m: dict) -> tuple[list[_Rule], list[tuple[_Rule, str]]]:
    """Step 2: forbid rules that match (unknown counts as a match) and those that fail."""
    matched: list[_Rule] = []
    failed: list[tuple[_Rule, str]] = []
    for r in tool.forbid.candidates(p, c, m):
        f = r.cond
        if f is None:
            matched.append(r)
            continue
        try:
            v = f(p, c, m)
        except Exception as err:  # noqa: BLE001
            failed.append((r, failure_message(err)))
            continue
        if v is True or type(v) is Unknown:
            matched.append(r)
        elif v is not False:
            failed.append((r, f"a condition evaluated to {describe(v)}, not a boolean"))
    return matched, failed


def _record(tool: _Tool, wrapper: str | None, o: _Outcome) -> Decision:
    return Decision(decision=o.effect, rules=tuple(r.id for r in o.rules), reason=o.reason, message=o.message,
                    approvers=o.approvers, timeout_s=o.timeout_s, tool=tool.name, wrapper=wrapper)


def _invalid(message: str, tool: str, wrapper: str | None, rules: tuple[str, ...] = ()) -> Decision:
    return Decision(decision=DENY, rules=rules, reason="invalid-params", message=message, tool=tool, wrapper=wrapper)


def _evaluation_error(failed: list[tuple[_Rule, str]], tool: _Tool, wrapper: str | None) -> Decision:
    rules = _source_order([r for r, _ in failed])
    first = min(failed, key=lambda rf: rf[0].index)
    return Decision(decision=DENY, rules=tuple(r.id for r in rules), reason="evaluation-error",
                    message=f"rule `{first[0].id}` could not be evaluated: {first[1]}", tool=tool.name,
                    wrapper=wrapper)


# ---- memoisation: which shared sub-conditions are evaluated once -------------------------


def _shared_nodes(art: fmt.Artifact) -> frozenset[int]:
    """Non-trivial nodes reached twice from the rules of one tool (conditions, values, index keys)."""
    kids = [children(node) for node in art.nodes]
    stamp = [-1] * len(art.nodes)
    shared: set[int] = set()
    for t, tool in enumerate(art.tools):
        stack: list[int] = []
        for g in (tool.forbid, *tool.groups):
            for pos in g.rules:
                r = art.rules[pos]
                if r.condition is not None:
                    stack.append(r.condition)
                stack.extend(node for _, node in r.assignments)
        while stack:
            i = stack.pop()
            if stamp[i] == t:
                shared.add(i)
                continue
            stamp[i] = t
            stack.extend(kids[i])
    nodes = art.nodes

    def cheap(i: int) -> bool:
        # A comparison of two plain reads (a param, a field, a literal) costs
        # less than the memo lookup that would replace its second evaluation.
        node = nodes[i]
        if node[0] in _TRIVIAL:
            return True
        return node[0] == fmt.CMP and nodes[node[2]][0] in _TRIVIAL and nodes[node[3]][0] in _TRIVIAL

    return frozenset(i for i in shared if not cheap(i))
