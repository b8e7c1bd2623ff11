"""The reference decision procedure: LANGUAGE.md §5, step by step.

This is the oracle the compiled decision table and the runtime engine are
tested against, so it is written to be read next to §5, not to be fast: every
rule of the tool is evaluated, and step 5 resolves once per assignment of the
unknown rules.

Choices where §5 leaves room (documented here; the language manual should
repeat them):

- Meta-tools are resolved before anything else, at most `MAX_WRAP_DEPTH`
  levels; deeper nesting is DENY `invalid-params`. Each wrapper's own params
  are validated first. Only the real tool's rules are evaluated (rules that
  select a wrapper never apply); the record keeps the real tool in `tool` and
  the outermost wrapper in `wrapper`.
- Step 1 also validates the context's attribute values (see `context.py`): a
  wrong-typed env/identity/intent value or a risk signal outside [0, 1] is DENY
  `invalid-params`, after the params themselves.
- A forbid rule that evaluates to unknown counts as matching (fail closed); one
  that fails is DENY `evaluation-error`.
- A rule whose condition fails (`Failure`) makes the decision DENY
  `evaluation-error` naming the failing rules, whatever other rules say.
- A DEFER for `conflict` or `absent-context` carries the minimum timeout of
  the rules it names that have one, else `DEFAULT_TIMEOUT_S`, and no approvers.
- Step-up approvers are the union in source order of the rules, first
  occurrence kept; outcomes compare approvers as sets.
- A modify whose right-hand side reads absent context (`set x = env.y`) has
  unknown new params: if that modify decides, the outcome is DEFER
  `absent-context` naming it and the fields it read.
- More than `MAX_UNKNOWN_RULES` unknown rules: DEFER `absent-context` naming
  all of them, without enumerating 2^k assignments.
- A MODIFY whose new params are invalid is DENY `invalid-params` naming the
  modify rules (step 6); one the forbids match is DENY `forbidden` naming the
  modify and forbid rules in source order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterable

import attrs

from aarm_runtime import values
from aarm_runtime.decision import ALLOW, DEFER, DENY, MODIFY, STEP_UP, Decision
from aarmc.reference.context import (
    InvalidContext,
    SessionData,
    derive_context,
    read_action,
    read_session,
)
from aarmc.reference.evaluate import Failure, Scope, Unknown, equal, evaluate, truth
from aarmc.semantics import ir

DEFAULT_TIMEOUT_S = 300
MAX_UNKNOWN_RULES = 16
MAX_WRAP_DEPTH = 4

_EFFECT_DECISION = {"deny": DENY, "allow": ALLOW, "modify": MODIFY, "step_up": STEP_UP, "defer": DEFER}
_EFFECT_VERB = {
    "deny": "denied",
    "allow": "allowed",
    "modify": "modified",
    "step_up": "step-up required",
    "defer": "deferred",
    "forbid": "forbidden",
}


def decide(policy: ir.Policy, action: Mapping, session: Mapping | None = None) -> Decision:
    """Decide one action in the context a session file describes (LANGUAGE.md §5).

    Raises `SessionFileError` only for a malformed action or session file;
    every other problem is a DENY with its reason.
    """
    tool_name, raw_params = read_action(action)
    data = read_session(session)
    try:
        return _decide(policy, tool_name, raw_params, data)
    except Exception as err:  # noqa: BLE001 - step 7: never propagate, never allow
        return Decision(decision=DENY, rules=(), reason="evaluation-error",
                        message=f"evaluation failed: {err}", tool=tool_name)


# ---- step 1: validate ------------------------------------------------------------------

def _schema(tool: ir.Tool) -> list[values.ParamSpec]:
    return [
        values.ParamSpec(name=p.name, type=p.type, default=p.default, has_default=p.has_default,
                         optional=p.optional)
        for p in tool.params
    ]


@attrs.frozen(kw_only=True)
class _Resolved:
    tool: ir.Tool
    params: dict[str, Any]
    wrapper: str | None


def _resolve_tool(policy: ir.Policy, name: str, raw: Any) -> _Resolved | Decision:
    """Follow meta-tools to the real tool and validate its params (and each wrapper's)."""
    path = "params"
    wrapper: str | None = None
    for depth in range(MAX_WRAP_DEPTH + 1):
        tool = policy.tool(name)
        if tool is None:
            return Decision(decision=DENY, rules=(), reason="unknown-tool",
                            message=f"unknown tool `{name}`", tool=name, wrapper=wrapper)
        try:
            params = values.validate_params(_schema(tool), raw, path)
        except values.InvalidValue as err:
            return _invalid(f"invalid params: {err}", name, wrapper)
        if tool.wraps is None:
            return _Resolved(tool=tool, params=params, wrapper=wrapper)
        if depth == MAX_WRAP_DEPTH:
            return _invalid(f"meta-tools nest more than {MAX_WRAP_DEPTH} levels deep", name, wrapper)
        wrapper = wrapper or tool.name
        inner = params.get(tool.wraps.name_param)
        if not isinstance(inner, str):
            return _invalid(f"invalid params: {path}.{tool.wraps.name_param}: the wrapped tool's name must be a string",
                            name, wrapper)
        args = params.get(tool.wraps.args_param)
        if not isinstance(args, Mapping):
            return _invalid(f"invalid params: {path}.{tool.wraps.args_param}: the wrapped tool's params must be an object",
                            name, wrapper)
        name, raw, path = inner, values.to_json_value(args), f"{path}.{tool.wraps.args_param}"
    raise AssertionError("unreachable: the loop returns at MAX_WRAP_DEPTH")


def _invalid(message: str, tool: str, wrapper: str | None, rules: tuple[str, ...] = ()) -> Decision:
    return Decision(decision=DENY, rules=rules, reason="invalid-params", message=message, tool=tool,
                    wrapper=wrapper)


# ---- step 4: resolve ------------------------------------------------------------------

@attrs.frozen(kw_only=True)
class Outcome:
    """The result of resolving one set of true rules.

    `reason` is `rule`, `default`, `conflict` or `absent-context` (a deciding
    modify whose new value reads absent context; then `fields` says which).
    """
    effect: str
    reason: str
    rules: tuple[ir.Rule, ...] = ()
    params: dict[str, Any] | None = None
    approvers: tuple[str, ...] = ()
    timeout_s: int | None = None
    message: str = ""
    fields: frozenset[str] = frozenset()

    @property
    def key(self) -> tuple:
        """What step 5 compares: (effect, modified params, approvers, timeout)."""
        if self.reason == "absent-context":
            params: Any = ("unknown", tuple(sorted(self.fields)))
        elif self.params is None:
            params = None
        else:
            params = values.canonical_json(self.params)
        return (self.effect, params, frozenset(self.approvers), self.timeout_s)


def _messages(rules: Iterable[ir.Rule]) -> str:
    return "; ".join(r.because if r.because else f"{_EFFECT_VERB[r.effect]} by rule `{r.id}`" for r in rules)


def _ids(rules: Iterable[ir.Rule]) -> str:
    return ", ".join(f"`{r.id}`" for r in rules)


def _min_timeout(rules: Iterable[ir.Rule]) -> int:
    timeouts = [r.timeout_s for r in rules if r.timeout_s is not None]
    return min(timeouts) if timeouts else DEFAULT_TIMEOUT_S


def _source_order(rules: Iterable[ir.Rule]) -> tuple[ir.Rule, ...]:
    return tuple(sorted(set(rules), key=lambda r: r.index))


def resolve(policy: ir.Policy, tool: ir.Tool, true_rules: Iterable[ir.Rule], params: dict[str, Any],
            assigned: Mapping[str, tuple[tuple[str, Any], ...]]) -> Outcome:
    """Step 4 on the rules taken to be true; `assigned` holds each modify's evaluated `set`s."""
    rules = _source_order(true_rules)
    if not rules:
        return Outcome(effect=policy.default, reason="default",
                       message=f"no rule decides `{tool.name}`: the default posture is {policy.default}")
    top = max(r.priority for r in rules)
    at_top = tuple(r for r in rules if r.priority == top)
    effects = sorted({r.effect for r in at_top})
    if len(effects) > 1:
        return Outcome(effect=DEFER, reason="conflict", rules=at_top, timeout_s=_min_timeout(at_top),
                       message=f"rules {_ids(at_top)} conflict at priority {top} ({', '.join(effects)})")
    effect = effects[0]
    if effect == "modify":
        return _compose(tool, at_top, params, assigned)
    if effect == "step_up":
        approvers: list[str] = []
        for r in at_top:
            approvers.extend(a for a in r.approvers if a not in approvers)
        return Outcome(effect=STEP_UP, reason="rule", rules=at_top, approvers=tuple(approvers),
                       timeout_s=_min_timeout(at_top),
                       message=_messages(at_top))
    if effect == "defer":
        return Outcome(effect=DEFER, reason="rule", rules=at_top, timeout_s=_min_timeout(at_top),
                       message=_messages(at_top))
    return Outcome(effect=_EFFECT_DECISION[effect], reason="rule", rules=at_top, message=_messages(at_top))


def _compose(tool: ir.Tool, modifies: tuple[ir.Rule, ...], params: dict[str, Any],
             assigned: Mapping[str, tuple[tuple[str, Any], ...]]) -> Outcome:
    """Several modifies at P*: source order, right-hand sides on the original params."""
    writes: dict[str, list[tuple[ir.Rule, Any]]] = {}
    for rule in modifies:
        for name, value in assigned[rule.id]:
            writes.setdefault(name, []).append((rule, value))
    conflicting: list[ir.Rule] = []
    conflict_params: list[str] = []
    unknown_rules: list[ir.Rule] = []
    unknown_fields: set[str] = set()
    new = dict(params)
    for name, candidates in writes.items():
        known = [(r, v) for r, v in candidates if not isinstance(v, Unknown)]
        for r, v in candidates:
            if isinstance(v, Unknown):
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
        return Outcome(effect=DEFER, reason="conflict", rules=rules, timeout_s=_min_timeout(rules),
                       message=f"modify rules {_ids(rules)} assign different values to {names}")
    if unknown_rules:
        rules = _source_order(unknown_rules)
        return Outcome(effect=MODIFY, reason="absent-context", rules=rules, fields=frozenset(unknown_fields))
    return Outcome(effect=MODIFY, reason="rule", rules=modifies, params=new, message=_messages(modifies))


# ---- steps 2 to 7 ------------------------------------------------------------------------

def _evaluation_error(failed: list[tuple[ir.Rule, Failure]], resolved: _Resolved) -> Decision:
    rules = _source_order(r for r, _ in failed)
    first = min(failed, key=lambda rf: rf[0].index)
    return Decision(decision=DENY, rules=tuple(r.id for r in rules), reason="evaluation-error",
                    message=f"rule `{first[0].id}` could not be evaluated: {first[1].message}",
                    tool=resolved.tool.name, wrapper=resolved.wrapper)


def _forbids(policy: ir.Policy, tool: ir.Tool, scope: Scope) -> tuple[list[ir.Rule], list[tuple[ir.Rule, Failure]]]:
    """Step 2: forbid rules that match (unknown counts as a match) and those that fail."""
    matched, failed = [], []
    for rule in policy.rules_for(tool.name):
        if rule.effect != "forbid":
            continue
        value = truth(rule.condition, scope)
        if isinstance(value, Failure):
            failed.append((rule, value))
        elif value is True or isinstance(value, Unknown):
            matched.append(rule)
    return matched, failed


def _decide(policy: ir.Policy, tool_name: str, raw_params: Any, data: SessionData) -> Decision:
    # Step 1: validate (meta-tools, tool, params, then context values).
    resolved = _resolve_tool(policy, tool_name, raw_params)
    if isinstance(resolved, Decision):
        return resolved
    tool, params = resolved.tool, resolved.params
    try:
        context = derive_context(policy, data)
    except InvalidContext as err:
        return _invalid(f"invalid context: `{err.path}`: {err.message}", tool.name, resolved.wrapper)
    scope = Scope(policy=policy, tool=tool, params=params, context=context)

    def record(**kwargs: Any) -> Decision:
        return Decision(tool=tool.name, wrapper=resolved.wrapper, **kwargs)

    # Step 2: forbid.
    matched, failed = _forbids(policy, tool, scope)
    if matched:
        return record(decision=DENY, rules=tuple(r.id for r in matched), reason="forbidden",
                      message=_messages(matched))
    if failed:
        return _evaluation_error(failed, resolved)

    # Step 3: every other rule, in Kleene logic.
    rules = [r for r in policy.rules_for(tool.name) if r.effect != "forbid"]
    status = {r.id: truth(r.condition, scope) for r in rules}
    failed = [(r, v) for r in rules if isinstance(v := status[r.id], Failure)]
    # A modify's new values matter only if it may be true; all are read on the original params.
    assigned: dict[str, tuple[tuple[str, Any], ...]] = {}
    for r in rules:
        if r.effect == "modify" and status[r.id] is not False:
            pairs = tuple((a.param, evaluate(a.value, scope)) for a in r.assignments)
            failed.extend((r, v) for _, v in pairs if isinstance(v, Failure))
            assigned[r.id] = pairs
    if failed:
        return _evaluation_error(failed, resolved)
    true_rules = [r for r in rules if status[r.id] is True]
    unknown_rules = [r for r in rules if isinstance(status[r.id], Unknown)]

    # Steps 4 and 5: resolve, once per assignment of the unknown rules.
    outcome = _resolve_unknowns(policy, tool, true_rules, unknown_rules, status, params, assigned)
    if outcome.reason == "absent-context":
        rules_named = outcome.rules
        fields = tuple(sorted(outcome.fields))
        return record(decision=DEFER, rules=tuple(r.id for r in rules_named), reason="absent-context",
                      fields=fields, timeout_s=_min_timeout(rules_named),
                      message=f"the decision depends on absent context ({', '.join(fields)})"
                              f" through rules {_ids(rules_named)}")
    if outcome.effect != MODIFY:
        return record(decision=outcome.effect, rules=tuple(r.id for r in outcome.rules), reason=outcome.reason,
                      message=outcome.message, approvers=outcome.approvers, timeout_s=outcome.timeout_s)

    # Step 6: a MODIFY's new params are validated again and the forbids run on them.
    assert outcome.params is not None
    modify_ids = tuple(r.id for r in outcome.rules)
    try:
        new_params = values.validate_params(_schema(tool), values.to_json_value(outcome.params))
    except values.InvalidValue as err:
        return _invalid(f"modify {_ids(outcome.rules)} produces invalid params: {err}", tool.name,
                        resolved.wrapper, modify_ids)
    matched, failed = _forbids(policy, tool, attrs.evolve(scope, params=new_params))
    if matched:
        both = _source_order(outcome.rules + tuple(matched))
        return record(decision=DENY, rules=tuple(r.id for r in both), reason="forbidden",
                      message=f"modify {_ids(outcome.rules)} produces params forbidden by {_ids(matched)}: "
                              f"{_messages(matched)}")
    if failed:
        return _evaluation_error(failed, resolved)
    return record(decision=MODIFY, rules=modify_ids, reason="rule", message=outcome.message,
                  params=values.to_jsonable(new_params))


def _resolve_unknowns(policy: ir.Policy, tool: ir.Tool, true_rules: list[ir.Rule], unknown_rules: list[ir.Rule],
                      status: Mapping[str, Any], params: dict[str, Any],
                      assigned: Mapping[str, tuple[tuple[str, Any], ...]]) -> Outcome:
    """Step 5 (R3a): the all-false outcome if every assignment agrees, else DEFER absent-context."""
    k = len(unknown_rules)

    def fields_of(rules: Iterable[ir.Rule]) -> frozenset[str]:
        return frozenset().union(*(status[r.id].fields for r in rules))

    if k > MAX_UNKNOWN_RULES:
        return Outcome(effect=DEFER, reason="absent-context", rules=_source_order(unknown_rules),
                       fields=fields_of(unknown_rules))
    outcomes = []
    for mask in range(2 ** k):
        chosen = [u for i, u in enumerate(unknown_rules) if mask >> i & 1]
        outcomes.append(resolve(policy, tool, true_rules + chosen, params, assigned))
    if len({o.key for o in outcomes}) == 1:
        return outcomes[0]
    matter = [u for i, u in enumerate(unknown_rules)
              if any(outcomes[m].key != outcomes[m ^ (1 << i)].key for m in range(2 ** k))]
    # Modifies whose new values read absent context matter too when they decide somewhere.
    unknown_values = [o for o in outcomes if o.reason == "absent-context"]
    rules = _source_order(matter + [r for o in unknown_values for r in o.rules])
    fields = fields_of(matter).union(*(o.fields for o in unknown_values))
    return Outcome(effect=DEFER, reason="absent-context", rules=rules, fields=fields)


@attrs.frozen(kw_only=True)
class RuleTruth:
    """One rule's value for `aarmc eval --explain`: `true`, `false`, `unknown` or `error`."""
    rule: str
    effect: str
    priority: int
    value: str
    detail: str = ""


def explain(policy: ir.Policy, action: Mapping, session: Mapping | None = None) -> tuple[RuleTruth, ...]:
    """The truth value of every rule of the action's (resolved) tool, in source order.

    Empty when the action never reaches rule evaluation (unknown tool, invalid
    params or context). Forbids are evaluated on the original params.
    """
    tool_name, raw_params = read_action(action)
    data = read_session(session)
    resolved = _resolve_tool(policy, tool_name, raw_params)
    if isinstance(resolved, Decision):
        return ()
    try:
        context = derive_context(policy, data)
    except InvalidContext:
        return ()
    scope = Scope(policy=policy, tool=resolved.tool, params=resolved.params, context=context)
    rows = []
    for rule in policy.rules_for(resolved.tool.name):
        value = truth(rule.condition, scope)
        if isinstance(value, Unknown):
            row = RuleTruth(rule=rule.id, effect=rule.effect, priority=rule.priority, value="unknown",
                            detail="absent: " + ", ".join(sorted(value.fields)))
        elif isinstance(value, Failure):
            row = RuleTruth(rule=rule.id, effect=rule.effect, priority=rule.priority, value="error",
                            detail=value.message)
        else:
            row = RuleTruth(rule=rule.id, effect=rule.effect, priority=rule.priority,
                            value="true" if value else "false")
        rows.append(row)
    return tuple(rows)
