"""The runtime decision engine on its own: fast paths, early stopping, memoisation, contexts.

Agreement with the reference interpreter on random policies is
`test_compile_differential.py`; here each mechanism that makes the engine
fast is shown to be there and to keep the reference's answer.
"""

from __future__ import annotations

import functools
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import policy_strategies as ps
from aarm_runtime import values
from aarm_runtime.context import SessionContext, SessionFormatError
from aarm_runtime.engine import MAX_UNKNOWN_RULES, ActionFormatError, Engine
from aarmc import testing
from aarmc.compile.artifact import compile_policy
from aarmc.reference import SessionFileError, decide
from aarmc.semantics import ir
from aarmc.semantics.load import load_policy, load_policy_text

SPEC = Path(__file__).parent.parent / "specs" / "mail-assistant"


def _load(text: str) -> ir.Policy:
    result = load_policy_text(text)
    assert result.policy is not None, result.diagnostics
    return result.policy


@functools.lru_cache(maxsize=None)
def _engine_for(policy: ir.Policy) -> Engine:
    return Engine.load(compile_policy(policy, None, validate=False).data, unsafe_unsigned=True)


def engine(text: str) -> tuple[ir.Policy, Engine]:
    policy = _load(text)
    return policy, _engine_for(policy)


class CountingContext(SessionContext):
    """A context that counts provenance look-ups: how often a `from` term was evaluated."""

    __slots__ = ("calls",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def from_untrusted(self, token):
        self.calls += 1
        return super().from_untrusted(token)


def counting(eng: Engine, session: dict | None) -> CountingContext:
    base = eng.context(session)
    ctx = CountingContext(eng.declarations)
    for slot in ("identity", "intent", "env", "risk", "now", "invalid", "failure"):
        setattr(ctx, slot, getattr(base, slot))
    for entry in base.history:
        ctx._append(entry)
    return ctx


# ---- the specs' own unit tests, through the engine -------------------------------------------


def test_the_mail_assistant_unit_tests_pass_on_the_engine():
    def engine_decide(policy, action, session):
        return _engine_for(policy).decide(action, session)

    run = testing.run([SPEC / "tests"], load=load_policy, decide=engine_decide,
                      session_error=(SessionFormatError, ActionFormatError))
    assert not run.problems and not run.policy_failures
    failed = [r for r in run.results if r.status != "pass"]
    assert run.results and not failed, [(r.case.name, r.mismatches) for r in failed]


# ---- validation --------------------------------------------------------------------------------

VALIDATE = """policy "v" version "1"
default allow
tool t.x(s: str, n: int, e: email, u: url?, k: enum("a", "b"), f: bool = true, d: decimal = 1.50, l: list[str] = [])
allow "r" t.x when params.n > 0
"""


@given(st.fixed_dictionaries({}, optional={
    "s": st.one_of(st.text(max_size=4), st.integers(), st.just("\ud800"), st.just("é\U00030000")),
    "n": st.one_of(st.integers(-10**20, 10**20), st.booleans(), st.decimals(places=1, allow_nan=False,
                                                                           allow_infinity=False)),
    "e": st.sampled_from(["a@B.c", "nope", "x@", "\t@a.b", 3]),
    "u": st.sampled_from(["https://X.org/a/../b", "nope", None, "http://[::1]/"]),
    "k": st.sampled_from(["a", "c", 1]),
    "f": st.sampled_from([False, None, "true"]),
    "d": st.sampled_from([0, Decimal("2.50"), "1"]),
    "l": st.sampled_from([[], ["a"], [1], "x"]),
    "zz": st.just(1),
}))
@settings(max_examples=300, suppress_health_check=list(HealthCheck))
def test_fast_validation_equals_validate_params(raw):
    policy, eng = engine(VALIDATE)
    tool = eng._plan("t.x")
    try:
        want = ("ok", values.validate_params(tool.schema, raw))
    except values.InvalidValue as err:
        want = ("invalid", str(err))
    try:
        got = ("ok", tool.validate(raw))
    except values.InvalidValue as err:
        got = ("invalid", str(err))
    assert got == want
    assert eng.decide({"tool": "t.x", "params": raw}) == decide(policy, {"tool": "t.x", "params": raw})


# ---- early stopping, memoisation, indexes ---------------------------------------------------------

SHARED = """policy "s" version "1"
default deny
tool m.read() returns low untrusted
tool m.send(to: email) returns none
labels low < high
deny "injected" priority 350 m.send when params.to from untrusted and not (params.to from user)
deny "injected-too" priority 340 m.send when params.to from untrusted
allow "known" priority 500 m.send when params.to.domain == "corp.example"
allow "fallback" priority 10 m.send when params.to from untrusted
"""


def test_a_shared_sub_condition_is_evaluated_once_per_decision():
    policy, eng = engine(SHARED)
    # The user named the recipient: "injected" (350) is false after reading
    # `params.to from untrusted`, and "injected-too" (340) reads it again.
    session = {"intent": {"text": "hi", "entities": ["eve@evil.example"]},
               "history": [{"tool": "m.read", "output": "x eve@evil.example y"}]}
    ctx = counting(eng, session)
    action = {"tool": "m.send", "params": {"to": "eve@evil.example"}}
    got = eng.decide(action, ctx)
    assert got == decide(policy, action, session)
    assert got.rules == ("injected-too",)
    assert ctx.calls == 1  # `params.to from untrusted`, shared by three rules, was evaluated once


def test_rules_below_the_deciding_priority_are_not_evaluated():
    policy, eng = engine(SHARED)
    session = {"history": [{"tool": "m.read", "output": "bob@corp.example"}]}
    ctx = counting(eng, session)
    action = {"tool": "m.send", "params": {"to": "bob@corp.example"}}
    got = eng.decide(action, ctx)
    assert got == decide(policy, action, session) and got.rules == ("known",)
    assert ctx.calls == 0  # priority 500 decided; the provenance rules below never ran


def test_an_unknown_rule_above_the_true_one_still_matters():
    text = """policy "u" version "1"
default deny
env flag: bool
tool a.b(n: int)
deny "maybe" priority 300 a.b when env.flag
allow "yes" a.b when params.n > 0
"""
    policy, eng = engine(text)
    for session in (None, {"env": {}}, {"env": {"flag": True}}, {"env": {"flag": False}}):
        action = {"tool": "a.b", "params": {"n": 1}}
        assert eng.decide(action, session) == decide(policy, action, session)
    assert eng.decide({"tool": "a.b", "params": {"n": 1}}).reason == "absent-context"


def test_too_many_unknown_rules_below_the_deciding_one_defer_as_in_the_reference():
    unknowns = "\n".join(f'allow "u{i}" a.b when env.flag' for i in range(MAX_UNKNOWN_RULES + 1))
    text = f'policy "m" version "1"\ndefault deny\nenv flag: bool\ntool a.b(n: int)\n' \
           f'deny "hard" priority 900 a.b when params.n > 0\n{unknowns}\n'
    policy, eng = engine(text)
    action = {"tool": "a.b", "params": {"n": 1}}
    got = eng.decide(action)
    assert got == decide(policy, action, None)
    assert got.reason == "absent-context" and len(got.rules) == MAX_UNKNOWN_RULES + 1
    assert eng.decide(action, {"env": {"flag": False}}).rules == ("hard",)
    from aarm_runtime import engine as engine_module

    # `aarmc.reference.decide` the attribute is the function; the module is in sys.modules.
    reference_module = sys.modules["aarmc.reference.decide"]

    for constant in ("MAX_UNKNOWN_RULES", "MAX_WRAP_DEPTH", "DEFAULT_TIMEOUT_S"):
        assert getattr(reference_module, constant) == getattr(engine_module, constant)


def test_an_equality_index_decides_like_a_scan():
    rules = "\n".join(f'allow "r{i}" a.b when params.k == "v{i % 7}" and params.n > {i % 3}' for i in range(40))
    text = f'policy "i" version "1"\ndefault deny\ntool a.b(k: str, n: int, o: str?)\n{rules}\n' \
           'deny "d" priority 100 a.b when params.k in {"v1", "v2"} and params.n == 2\n' \
           'allow "opt" a.b when has params.o and params.o == "v3"\n'
    policy, eng = engine(text)
    group = eng._plan("a.b").groups[0]
    assert group.key is not None and len(group.lookup) == 7
    for k in ("v0", "v1", "v2", "v6", "zz"):
        for n in range(4):
            for extra in ({}, {"o": "v3"}):
                action = {"tool": "a.b", "params": {"k": k, "n": n, **extra}}
                assert eng.decide(action) == decide(policy, action)


def test_a_pathological_text_costs_linear_time():
    import time

    policy, eng = engine('policy "r" version "1"\ndefault allow\ntool a.b(s: str)\n'
                         'deny "nested" a.b when params.s matches /^(a+)+$/\n')
    action = {"tool": "a.b", "params": {"s": "a" * 20_000 + "!"}}
    start = time.perf_counter()
    got = eng.decide(action)
    assert time.perf_counter() - start < 1.0  # a backtracking engine takes longer than the universe
    assert (got.decision, got.reason) == ("allow", "default")


def test_decisions_are_reused_but_equal():
    policy, eng = engine(SHARED)
    action = {"tool": "m.send", "params": {"to": "bob@corp.example"}}
    first, second = eng.decide(action), eng.decide(action)
    assert first is second and first == decide(policy, action)


# ---- meta-tools, modify, errors -----------------------------------------------------------------

META = """policy "meta" version "1"
default deny
labels low < high
tool mcp.invoke(name: str, args: json) wraps params.name with params.args
tool db.query(sql: str, limit: int = 100) returns low
forbid "no-drop" db.query when params.sql matches /drop/i
modify "cap" db.query when params.limit > 10 set limit = 10
modify "cap-more" db.query when params.limit > 1000 set limit = 5
allow "read" db.query
"""


@pytest.mark.parametrize("action", [
    {"tool": "mcp.invoke", "params": {"name": "db.query", "args": {"sql": "select 1", "limit": 50}}},
    {"tool": "mcp.invoke", "params": {"name": "db.query", "args": {"sql": "DROP table x"}}},
    {"tool": "mcp.invoke", "params": {"name": "db.nope", "args": {}}},
    {"tool": "mcp.invoke", "params": {"name": "db.query", "args": {"sql": 1}}},
    {"tool": "mcp.invoke", "params": {"name": "mcp.invoke", "args": {"name": "db.query", "args": {"sql": "x"}}}},
    {"tool": "mcp.invoke", "params": {"name": 3, "args": {}}},
    {"tool": "db.query", "params": {"sql": "select", "limit": 5000}},
    {"tool": "db.query", "params": {"sql": "select", "limit": 5}},
    {"tool": "db.query", "params": {"sql": "select", "extra": 1}},
    {"tool": "db.query"},
])
def test_meta_tools_and_modify_decide_as_the_reference(action):
    policy, eng = engine(META)
    assert eng.decide(action) == decide(policy, action)


def test_a_malformed_action_or_session_raises_like_the_reference():
    policy, eng = engine(META)
    for action in ({"tool": 3}, {"params": {}}, [], {"tool": "db.query", "extra": 1}):
        with pytest.raises(ActionFormatError) as got:
            eng.decide(action)
        with pytest.raises(SessionFileError) as want:
            decide(policy, action)
        assert str(got.value) == str(want.value)
    for session in ([], {"now": "yesterday"}, {"history": [{"tool": 1}]}, {"bogus": 1}, {"env": []}):
        with pytest.raises(SessionFormatError) as got:
            eng.decide({"tool": "db.query", "params": {"sql": "x"}}, session)
        with pytest.raises(SessionFileError) as want:
            decide(policy, {"tool": "db.query", "params": {"sql": "x"}}, session)
        assert str(got.value) == str(want.value)


def test_an_exception_inside_the_engine_is_a_deny():
    policy, eng = engine(META)

    class Broken(SessionContext):
        @property
        def invalid(self):  # noqa: D401 - a context that fails on every read
            raise RuntimeError("broken context")

    got = eng.decide({"tool": "db.query", "params": {"sql": "x"}}, Broken.__new__(Broken))
    assert (got.decision, got.reason, got.message) == ("deny", "evaluation-error", "evaluation failed: broken context")


# ---- contexts ---------------------------------------------------------------------------------------


@given(ps.sessions())
@settings(max_examples=150, suppress_health_check=list(HealthCheck))
def test_recording_a_history_entry_by_entry_gives_the_same_context(session):
    _, eng = engine(ps.HEADER.format(default="deny") + 'allow "r" m.send\n')
    whole = eng.context(session)
    grown = eng.context({k: v for k, v in (session or {}).items() if k != "history"})
    for e in (session or {}).get("history", []):
        time = None if "time" not in e else whole.history[len(grown.history)].time
        grown.record(e["tool"], time=time, output=e.get("output"), has_output="output" in e)
    assert (grown.tags, grown.level, grown.actions, grown.history) == (whole.tags, whole.level, whole.actions,
                                                                      whole.history)
    for tools in (("m.read",), ("m.read", "m.web"), ("x.undeclared",)):
        assert grown.count(tools) == whole.count(tools)
        assert grown.count_within(tools, 3600) == whole.count_within(tools, 3600)


def test_the_context_derives_what_the_reference_derives():
    from aarmc.reference.context import derive_context, read_session

    policy, eng = engine(ps.HEADER.format(default="deny") + 'allow "r" m.send\n')
    session = {"history": [{"tool": "m.read", "output": "a"}, {"tool": "m.quiet"}, {"tool": "m.pay"},
                           {"tool": "x.unknown"}],
               "identity": {"role": "r", "delegation": [{"from": "a"}]}, "risk": {"drift": Decimal("0.25")}}
    ref = derive_context(policy, read_session(session))
    ctx = eng.context(session)
    assert (ctx.tags, ctx.level, ctx.identity, ctx.risk, ctx.intent, ctx.env) == \
        (ref.tags, ref.level, ref.identity, ref.risk, ref.intent, ref.env)


def test_the_artifact_path_never_evaluates_code():
    """No eval, exec, compile or __import__, and no importlib, in any module that loading and deciding import."""
    import ast
    import json
    import subprocess

    listing = subprocess.run(
        [sys.executable, "-c", "import sys, json, aarm_runtime.engine, aarm_runtime.regex; "
                               "print(json.dumps(sorted(m for m in sys.modules if m.startswith('aarm_runtime'))))"],
        capture_output=True, text=True, check=True)
    modules = json.loads(listing.stdout)
    assert {"aarm_runtime.artifact", "aarm_runtime.engine", "aarm_runtime.program", "aarm_runtime.context"} <= \
        set(modules)
    runtime = Path(sys.modules["aarm_runtime"].__file__).parent
    for name in modules:
        path = runtime / (name.split(".", 1)[1] + ".py") if "." in name else runtime / "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec", "compile", "__import__"), (path.name, node.lineno)
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not any(n and n.split(".")[0] in ("importlib", "pickle", "marshal") for n in names), \
                    (path.name, node.lineno)
