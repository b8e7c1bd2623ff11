"""The reference interpreter on hand-built IR (independent of the front end).

The YAML corpus (tests/test_conformance.py) exercises it through real policy
text; these tests pin what the corpus cannot reach (evaluation errors, invalid
MODIFY output, malformed session files) and check its logic against brute force.
"""

from __future__ import annotations

import copy
import doctest
import importlib
import itertools
from decimal import Decimal
from fractions import Fraction

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aarm_runtime.values import EnumT, ListT, Prim
from aarmc.reference import SessionFileError, decide
from aarmc.reference.context import SessionData, derive_context, parse_time, read_session
from aarmc.reference.evaluate import Failure, Scope, Unknown, evaluate, truth
from aarmc.semantics import ir

STR, INT, BOOL, EMAIL, DEC = Prim("str"), Prim("int"), Prim("bool"), Prim("email"), Prim("decimal")
NONE_OUT = ir.Output(none=True)


# ---- building IR by hand --------------------------------------------------------------

def param(name, t, default=None, optional=False):
    return ir.ParamSpec(name=name, type=t, optional=optional or default is not None,
                        has_default=default is not None, default=default)


def tool(name, *params, output=NONE_OUT, wraps=None):
    return ir.Tool(name=name, params=tuple(params), output=output, wraps=wraps)


def rule(id, effect, tools, cond=None, priority=None, **kw):
    if priority is None:
        priority = ir.DEFAULT_PRIORITY.get(effect, -1)
    return ir.Rule(id=id, effect=effect, priority=priority, tools=tuple(sorted(tools)), condition=cond,
                   explicit_priority=False, **kw)


def policy(tools, rules=(), default="deny", labels=("public", "internal", "secret"), tags=("pii",), env=()):
    indexed = tuple(attrs.evolve(r, index=i) for i, r in enumerate(rules))
    return ir.Policy(name="p", version="1", default=default, labels=tuple(labels), tags=tuple(tags),
                     tools=tuple(sorted(tools, key=lambda t: t.name)), env=tuple(env), rules=indexed)


def env_var(name, t=BOOL):
    return ir.EnvVar(name=name, type=t)


def lit(v):
    return ir.Lit(value=v)


def env(name):
    return ir.Ctx(source="env", key=name)


def p(name):
    return ir.Param(name=name)


def cmp(op, a, b):
    return ir.Cmp(op=op, left=a, right=b)


ACT = tool("t.act", param("x", INT, default=0), param("s", STR, default="a"))


def act(**params):
    return {"tool": "t.act", "params": params}


# ---- step 1: validation and the file formats ----------------------------------------------

def test_unknown_tool_is_denied_even_under_default_allow():
    d = decide(policy([ACT], default="allow"), {"tool": "t.nope", "params": {}})
    assert (d.decision, d.reason, d.rules, d.tool) == ("deny", "unknown-tool", (), "t.nope")


@pytest.mark.parametrize("params, where", [
    ({"x": "42"}, "params.x"),
    ({"x": True}, "params.x"),
    ({"x": Decimal("1.5")}, "params.x"),
    ({"y": 1}, "params.y"),
    ({"s": ["a"]}, "params.s"),
])
def test_invalid_params_name_the_param(params, where):
    d = decide(policy([ACT], default="allow"), act(**params))
    assert (d.decision, d.reason, d.rules) == ("deny", "invalid-params", ())
    assert where in d.message


def test_required_param_and_defaults():
    t = tool("t.req", param("a", INT), param("b", ListT(STR), default=("x",)))
    pol = policy([t], [rule("m", "modify", ["t.req"], cmp(">", p("a"), lit(1)),
                            assignments=(ir.Assignment(param="a", value=lit(1)),))])
    assert decide(pol, {"tool": "t.req", "params": {}}).reason == "invalid-params"
    d = decide(pol, {"tool": "t.req", "params": {"a": 5}})
    assert d.decision == "modify" and d.params == {"a": 1, "b": ["x"]}


@pytest.mark.parametrize("session, path", [
    ([], "$"),
    ({"histroy": []}, "$"),
    ({"identity": "alice"}, "$.identity"),
    ({"env": [1]}, "$.env"),
    ({"history": {}}, "$.history"),
    ({"history": ["x"]}, "$.history[0]"),
    ({"history": [{"params": {}}]}, "$.history[0]"),
    ({"history": [{"tool": 3}]}, "$.history[0].tool"),
    ({"history": [{"tool": "a.b", "params": []}]}, "$.history[0].params"),
    ({"history": [{"tool": "a.b", "time": "yesterday"}]}, "$.history[0].time"),
    ({"history": [{"tool": "a.b", "when": 1}]}, "$.history[0]"),
    ({"history": [{"tool": "a.b", "output": 1.5}]}, "$.history[0].output"),
    ({"now": "2026-11-26"}, "$.now"),
    ({"now": "2026-02-30T10:00:00Z"}, "$.now"),
    ({"now": "2026-11-26T10:00:00"}, "$.now"),
    ({"now": "2026-11-26T23:59:60Z"}, "$.now"),
    ({"now": 1764151200}, "$.now"),
])
def test_malformed_session_files_raise_with_a_location(session, path):
    with pytest.raises(SessionFileError) as err:
        decide(policy([ACT]), act(), session)
    assert err.value.path == path
    assert str(err.value).startswith(path + ": ")


@pytest.mark.parametrize("action, path", [
    ("t.act", "$"),
    ({"params": {}}, "$"),
    ({"tool": 1}, "$.tool"),
    ({"tool": "t.act", "args": {}}, "$"),
])
def test_malformed_action_files_raise(action, path):
    with pytest.raises(SessionFileError) as err:
        decide(policy([ACT]), action)
    assert err.value.path == path


def test_parse_time_is_exact():
    assert parse_time("1970-01-01T00:00:00Z", "$") == 0
    assert parse_time("1970-01-01T00:00:00.000001Z", "$") == Fraction(1, 10**6)
    assert parse_time("1970-01-01T00:00:00.0000000001Z", "$") == Fraction(1, 10**10)
    assert parse_time("2026-11-26T11:00:00+01:00", "$") == parse_time("2026-11-26T10:00:00Z", "$")
    assert parse_time("2026-11-26t04:30:00-05:30", "$") == parse_time("2026-11-26T10:00:00z", "$")
    assert parse_time("2024-02-29T00:00:00Z", "$") - parse_time("2024-02-28T00:00:00Z", "$") == 86400


@pytest.mark.parametrize("session, path", [
    ({"risk": {"drift": Decimal("1.01")}}, "risk.drift"),
    ({"risk": {"drift": True}}, "risk.drift"),
    ({"risk": {"injection": -1}}, "risk.injection"),
    ({"intent": {"score": Decimal("-0.5")}}, "intent.score"),
    ({"intent": {"text": 5}}, "intent.text"),
    ({"intent": {"tools": "a.b"}}, "intent.tools"),
    ({"identity": {"principal": ["alice"]}}, "identity.principal"),
    ({"identity": {"scopes": ["a", 1]}}, "identity.scopes[1]"),
    ({"identity": {"delegation": {"from": "a"}}}, "identity.delegation"),
    ({"env": {"flag": "yes"}}, "env.flag"),
])
def test_invalid_context_values_deny_invalid_params(session, path):
    pol = policy([ACT], default="allow", env=[env_var("flag")])
    d = decide(pol, act(), session)
    assert (d.decision, d.reason, d.rules) == ("deny", "invalid-params", ())
    assert f"`{path}`" in d.message


def test_undeclared_env_and_unknown_attributes_are_ignored():
    pol = policy([ACT], default="allow")
    session = {"env": {"other": [1, 2]}, "identity": {"issuer": 3}, "intent": {"lang": 1}}
    assert decide(pol, act(), session).decision == "allow"


# ---- the context ------------------------------------------------------------------------

def test_level_and_tags_from_history():
    tools = [
        tool("a.conf", output=ir.Output(none=False, level=1, tags=("pii",))),
        tool("a.none"),
        tool("a.noreturns", output=ir.Output(none=False, declared=False)),
    ]
    pol = policy(tools)

    def ctx(*names):
        return derive_context(pol, read_session({"history": [{"tool": n} for n in names]}))

    assert (ctx().level, ctx().tags) == (0, frozenset())
    assert (ctx("a.none").level, ctx("a.none").tags) == (0, frozenset())
    assert (ctx("a.conf").level, ctx("a.conf").tags) == (1, {"pii"})
    assert ctx("a.noreturns").level == 2 == ctx("x.undeclared").level
    assert ctx("a.noreturns").tags == frozenset()


def test_delegated_is_derived_from_the_chain():
    pol = policy([ACT])
    assert derive_context(pol, read_session({"identity": {"delegation": []}})).identity == {"delegated": False}
    assert derive_context(pol, read_session({"identity": {"delegation": [{}]}})).identity == {"delegated": True}
    assert derive_context(pol, read_session({"identity": {}})).identity == {}


def _scope(pol, session=None, params=None, t=ACT):
    return Scope(policy=pol, tool=t, params=params or {"x": 0, "s": "a"},
                 context=derive_context(pol, read_session(session)))


def test_windowed_count_boundaries():
    pol = policy([ACT, tool("m.send")])
    count = ir.Count(tools=("m.send",), within_s=60)
    now = "2026-01-01T00:01:00Z"

    def at(*times):
        return evaluate(count, _scope(pol, {"now": now, "history": [{"tool": "m.send", "time": t} for t in times]}))

    assert at("2026-01-01T00:00:00Z") == 0                      # now - D is outside
    assert at("2026-01-01T00:00:00.5Z", now) == 2               # now is inside
    assert at("2026-01-01T00:01:00.001Z") == 0                  # the future is not counted
    assert evaluate(count, _scope(pol, {"history": []})) == Unknown(frozenset({"now"}))
    missing = _scope(pol, {"now": now, "history": [{"tool": "m.send"}, {"tool": "x.y"}]})
    assert evaluate(count, missing) == Unknown(frozenset({"history.time"}))
    assert evaluate(ir.Count(tools=("m.send",)), missing) == 1


# ---- step 3: Kleene logic ---------------------------------------------------------------

T, F, U = True, False, "unknown"
KLEENE_AND = {(T, T): T, (T, F): F, (T, U): U, (F, F): F, (F, U): F, (U, U): U}
KLEENE_OR = {(T, T): T, (T, F): T, (T, U): T, (F, F): F, (F, U): U, (U, U): U}


def _operand(v, name):
    return env(name), ({} if v == U else {name: v})


def _plain(result):
    return U if isinstance(result, Unknown) else result


@pytest.mark.parametrize("a, b", list(itertools.product([T, F, U], repeat=2)))
def test_kleene_truth_tables(a, b):
    pol = policy([ACT], env=[env_var("a"), env_var("b")])
    (ea, va), (eb, vb) = _operand(a, "a"), _operand(b, "b")
    scope = _scope(pol, {"env": {**va, **vb}})
    key = (a, b) if (a, b) in KLEENE_AND else (b, a)
    assert _plain(evaluate(ir.And(items=(ea, eb)), scope)) == KLEENE_AND[key]
    assert _plain(evaluate(ir.Or(items=(ea, eb)), scope)) == KLEENE_OR[key]
    assert _plain(evaluate(ir.Not(operand=ea), scope)) == {T: F, F: T, U: U}[a]


def test_unknown_names_the_fields_it_read():
    pol = policy([ACT], env=[env_var("a")])
    expr = ir.And(items=(env("a"), cmp(">", ir.Ctx(source="risk", key="drift"), lit(Decimal("0.5"))),
                         cmp("==", ir.Ctx(source="identity", key="role"), lit("admin"))))
    assert truth(expr, _scope(pol)) == Unknown(frozenset({"env.a", "risk.drift", "identity.role"}))
    assert truth(expr, _scope(pol, {"risk": {"drift": 0}})) is False


def test_failure_is_absorbed_by_false_and_true_in_any_order():
    pol = policy([ACT])
    bad = cmp("<", lit("a"), lit(1))
    assert isinstance(evaluate(bad, _scope(pol)), Failure)
    for items in [(bad, lit(False)), (lit(False), bad)]:
        assert evaluate(ir.And(items=items), _scope(pol)) is False
        assert isinstance(evaluate(ir.Or(items=items), _scope(pol)), Failure)
    for items in [(bad, lit(True)), (lit(True), bad)]:
        assert evaluate(ir.Or(items=items), _scope(pol)) is True


def test_from_user_is_kleene_over_entities_and_text():
    pol = policy([ACT])
    v = ir.From(value=lit("ACME"), source="user")
    assert truth(v, _scope(pol)) == Unknown(frozenset({"intent"}))
    assert truth(v, _scope(pol, {"intent": {"text": "pay ACME"}})) is True
    assert truth(v, _scope(pol, {"intent": {"text": "pay X"}})) == Unknown(frozenset({"intent.entities"}))
    assert truth(v, _scope(pol, {"intent": {"entities": ["ACME"]}})) is True
    assert truth(v, _scope(pol, {"intent": {"text": "x", "entities": []}})) is False


# ---- steps 6 and 7 ------------------------------------------------------------------------

def test_evaluation_error_denies_and_names_the_rule():
    pol = policy([ACT], [rule("ok", "allow", ["t.act"]), rule("bad", "allow", ["t.act"], cmp("<", p("s"), lit(1)))],
                 default="allow")
    d = decide(pol, act())
    assert (d.decision, d.reason, d.rules) == ("deny", "evaluation-error", ("bad",))


def test_failing_forbid_is_an_evaluation_error():
    pol = policy([ACT], [rule("f", "forbid", ["t.act"], cmp("<", p("s"), lit(1))), rule("a", "allow", ["t.act"])])
    d = decide(pol, act())
    assert (d.decision, d.reason, d.rules) == ("deny", "evaluation-error", ("f",))


def test_forbid_that_is_unknown_fails_closed():
    pol = policy([ACT], [rule("f", "forbid", ["t.act"], env("a")), rule("a", "allow", ["t.act"])],
                 env=[env_var("a")])
    assert decide(pol, act()).reason == "forbidden"


def test_unguarded_absent_param_is_an_evaluation_error_not_a_crash():
    t = tool("t.opt", param("o", STR, optional=True))
    pol = policy([t], [rule("r", "deny", ["t.opt"], cmp("==", p("o"), lit("x")))], default="allow")
    assert decide(pol, {"tool": "t.opt", "params": {}}).reason == "evaluation-error"
    guarded = ir.And(items=(cmp("==", p("o"), lit("x")), ir.Has(target=p("o"))))
    pol = policy([t], [rule("r", "deny", ["t.opt"], guarded)], default="allow")
    assert decide(pol, {"tool": "t.opt", "params": {}}).decision == "allow"


def test_failing_modify_value_is_an_evaluation_error():
    pol = policy([ACT], [rule("m", "modify", ["t.act"],
                              assignments=(ir.Assignment(param="x", value=ir.Var(name="nope")),))])
    d = decide(pol, act())
    assert (d.reason, d.rules) == ("evaluation-error", ("m",))


def test_unexpected_exception_is_an_evaluation_error():
    broken = tool("t.bad", ir.ParamSpec(name="x", type="not a type"))
    d = decide(policy([broken], default="allow"), {"tool": "t.bad", "params": {"x": 1}})
    assert (d.decision, d.reason) == ("deny", "evaluation-error")


def test_modify_producing_invalid_params_is_denied():
    pol = policy([ACT], [rule("m", "modify", ["t.act"], assignments=(ir.Assignment(param="x", value=lit("ten")),))])
    d = decide(pol, act())
    assert (d.decision, d.reason, d.rules) == ("deny", "invalid-params", ("m",))


def test_modify_producing_forbidden_params_is_denied():
    rules = [
        rule("m", "modify", ["t.act"], assignments=(ir.Assignment(param="s", value=lit("rm")),)),
        rule("f", "forbid", ["t.act"], cmp("==", p("s"), lit("rm"))),
    ]
    d = decide(policy([ACT], rules), act())
    assert (d.decision, d.reason, d.rules) == ("deny", "forbidden", ("m", "f"))


def test_wrapper_with_non_object_args():
    wrapper = tool("w.call", param("name", STR), param("args", Prim("json")),
                   wraps=ir.Wrap(name_param="name", args_param="args"))
    pol = policy([wrapper, ACT], [rule("a", "allow", ["t.act"])])
    d = decide(pol, {"tool": "w.call", "params": {"name": "t.act", "args": "x"}})
    assert (d.reason, d.wrapper) == ("invalid-params", "w.call")
    d = decide(pol, {"tool": "w.call", "params": {"name": "t.act", "args": {"x": 3}}})
    assert (d.decision, d.tool, d.wrapper) == ("allow", "t.act", "w.call")


def test_rules_on_a_wrapper_do_not_apply():
    # The wrapped call is decided as the real tool (LANGUAGE.md §3): a rule selecting the
    # wrapper itself is never evaluated. Pinned so that changing this is a decision.
    wrapper = tool("w.call", param("name", STR), param("args", Prim("json")),
                   wraps=ir.Wrap(name_param="name", args_param="args"))
    pol = policy([wrapper, ACT], [rule("no-w", "forbid", ["w.call"]), rule("a", "allow", ["t.act"])])
    d = decide(pol, {"tool": "w.call", "params": {"name": "t.act", "args": {}}})
    assert (d.decision, d.rules, d.tool, d.wrapper) == ("allow", ("a",), "t.act", "w.call")


def test_enum_and_list_values_in_conditions():
    t = tool("t.e", param("mode", EnumT(("r", "w"))), param("to", ListT(EMAIL), default=()))
    cond = ir.And(items=(cmp("==", p("mode"), lit("w")),
                         ir.Quant(kind="any", var="c", collection=p("to"),
                                  body=cmp("==", ir.Field(base=ir.Var(name="c"), name="domain"), lit("x.example")))))
    pol = policy([t], [rule("d", "deny", ["t.e"], cond)], default="allow")
    assert decide(pol, {"tool": "t.e", "params": {"mode": "w", "to": ["a@X.Example"]}}).decision == "deny"
    assert decide(pol, {"tool": "t.e", "params": {"mode": "r", "to": ["a@X.Example"]}}).decision == "allow"


# ---- determinism ----------------------------------------------------------------------------

def test_identical_inputs_give_identical_records_and_inputs_are_not_changed():
    pol = policy([ACT], [rule("a", "allow", ["t.act"], env("a")), rule("d", "deny", ["t.act"], cmp(">", p("x"), lit(3)))],
                 env=[env_var("a")])
    action, session = act(x=1), {"env": {}, "history": [{"tool": "t.act", "params": {"x": 1}}]}
    before = copy.deepcopy((action, session))
    first = decide(pol, action, session)
    assert decide(pol, action, session) == first
    assert (action, session) == before
    assert decide(pol, act(x=1), None) == decide(pol, act(x=1), {})


# ---- properties against brute force ------------------------------------------------------------

N_ENV = 3
ENV_NAMES = [f"e{i}" for i in range(N_ENV)]


def _conditions():
    leaf = st.one_of(
        st.sampled_from([env(n) for n in ENV_NAMES]),
        st.sampled_from([lit(True), lit(False)]),
        st.sampled_from([cmp(">", p("x"), lit(k)) for k in (0, 1, 2)]),
    )
    return st.recursive(leaf, lambda sub: st.one_of(
        st.builds(lambda o: ir.Not(operand=o), sub),
        st.builds(lambda items: ir.And(items=tuple(items)), st.lists(sub, min_size=1, max_size=3)),
        st.builds(lambda items: ir.Or(items=tuple(items)), st.lists(sub, min_size=1, max_size=3)),
    ), max_leaves=6)


@st.composite
def _rules(draw):
    n = draw(st.integers(1, 5))
    out = []
    for i in range(n):
        effect = draw(st.sampled_from(["deny", "allow", "modify", "step_up", "defer"]))
        kw = {}
        if effect == "modify":
            kw["assignments"] = (ir.Assignment(param="x", value=lit(draw(st.integers(0, 2)))),)
        if effect == "step_up":
            kw["approvers"] = tuple(draw(st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=2, unique=True)))
            kw["timeout_s"] = draw(st.sampled_from([60, 120]))
        if effect == "defer":
            kw["timeout_s"] = draw(st.sampled_from([60, 120]))
        priority = draw(st.one_of(st.none(), st.sampled_from([100, 200, 300])))
        out.append(rule(f"r{i}", effect, ["t.act"], draw(_conditions()), priority=priority, **kw))
    return out


def _outcome(d):
    return (d.decision, repr(d.params), frozenset(d.approvers), d.timeout_s)


@settings(max_examples=150, deadline=None)
@given(cond=_conditions(), partial=st.fixed_dictionaries({}, optional={n: st.booleans() for n in ENV_NAMES}),
       x=st.integers(0, 3))
def test_kleene_evaluation_is_sound(cond, partial, x):
    """A known result under absent env values is the result under every way of supplying them."""
    pol = policy([ACT], env=[env_var(n) for n in ENV_NAMES])
    got = truth(cond, _scope(pol, {"env": partial}, params={"x": x, "s": "a"}))
    missing = [n for n in ENV_NAMES if n not in partial]
    completions = [truth(cond, _scope(pol, {"env": {**partial, **dict(zip(missing, bits))}}, params={"x": x, "s": "a"}))
                   for bits in itertools.product([True, False], repeat=len(missing))]
    assert all(isinstance(c, bool) for c in completions)
    if isinstance(got, bool):
        assert set(completions) == {got}
    else:
        assert isinstance(got, Unknown) and got.fields <= {f"env.{n}" for n in missing}


@settings(max_examples=150, deadline=None)
@given(rules=_rules(), partial=st.fixed_dictionaries({}, optional={n: st.booleans() for n in ENV_NAMES}),
       x=st.integers(0, 3), default=st.sampled_from(["allow", "deny"]))
def test_absent_context_defers_unless_every_completion_agrees(rules, partial, x, default):
    """R3a is sound: a decision taken with context absent is the one taken for every completion of it."""
    pol = policy([ACT], rules, default=default, env=[env_var(n) for n in ENV_NAMES])
    got = decide(pol, act(x=x), {"env": partial})
    missing = [n for n in ENV_NAMES if n not in partial]
    completions = [decide(pol, act(x=x), {"env": {**partial, **dict(zip(missing, bits))}})
                   for bits in itertools.product([True, False], repeat=len(missing))]
    assert all(c.reason != "absent-context" for c in completions)
    if got.reason == "absent-context":
        assert set(got.fields) <= {f"env.{n}" for n in missing} and got.rules
        assert list(got.fields) == sorted(got.fields)
    else:
        assert {_outcome(c) for c in completions} == {_outcome(got)}
    rule_ids = [r.id for r in pol.rules]
    assert list(got.rules) == sorted(got.rules, key=rule_ids.index)


@settings(max_examples=100, deadline=None)
@given(rules=_rules(), x=st.integers(0, 3), bits=st.tuples(*[st.booleans()] * N_ENV))
def test_full_context_resolution_matches_a_direct_reading_of_step_4(rules, x, bits):
    """With every field present, the decision is the plain P* resolution of the true rules."""
    pol = policy([ACT], rules, env=[env_var(n) for n in ENV_NAMES])
    session = {"env": dict(zip(ENV_NAMES, bits))}
    got = decide(pol, act(x=x), session)
    scope = _scope(pol, session, params={"x": x, "s": "a"})
    true = [r for r in pol.rules if truth(r.condition, scope) is True]
    if not true:
        assert (got.decision, got.reason, got.rules) == ("deny", "default", ())
        return
    top = max(r.priority for r in true)
    at_top = [r for r in true if r.priority == top]
    effects = {r.effect for r in at_top}
    if len(effects) > 1:
        assert (got.decision, got.reason) == ("defer", "conflict")
        assert got.rules == tuple(r.id for r in at_top)
        return
    effect = effects.pop()
    if effect == "modify" and len({r.assignments[0].value.value for r in at_top}) > 1:
        assert (got.decision, got.reason) == ("defer", "conflict")
        return
    assert (got.decision, got.reason, got.rules) == (effect, "rule", tuple(r.id for r in at_top))
    if effect == "modify":
        assert got.params == {"x": at_top[0].assignments[0].value.value, "s": "a"}
    if effect in ("step_up", "defer"):
        assert got.timeout_s == min(r.timeout_s for r in at_top)
    if effect == "step_up":
        assert set(got.approvers) == {a for r in at_top for a in r.approvers}


# ---- doctests ------------------------------------------------------------------------------------

@pytest.mark.parametrize("module", ["aarmc.reference", "aarmc.reference.context", "aarmc.reference.evaluate",
                                    "aarmc.reference.decide"])
def test_doctests(module):
    # `aarmc.reference.decide` the attribute is the function, so import the module by name.
    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0


def test_session_data_default_is_empty():
    assert read_session(None) == SessionData()
