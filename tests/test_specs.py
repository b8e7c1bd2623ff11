"""The acceptance corpus: the five policies in `specs/` (ARCHITECTURE.md).

Each spec must load with zero diagnostics, pass its own `aarmc test` cases
with 100% rule coverage, and load fast. Two further checks keep the corpus
honest until the Z3 checker proves its asserts: every assert is tried on
thousands of sampled (action, session) pairs through the reference
interpreter, and the five specs together must use every construct of the
language (they are its showcase).
"""

from __future__ import annotations

import random
import re
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import attrs
import pytest

from aarm_runtime import values
from aarm_runtime.values import EnumT, ListT, Prim
from aarmc import testing
from aarmc.reference import SessionFileError, decide
from aarmc.reference.context import InvalidContext, derive_context, read_session
from aarmc.reference.evaluate import Scope, truth
from aarmc.semantics import ir
from aarmc.semantics.load import load_policy, load_policy_text
from aarmc.syntax import ast

SPECS_DIR = Path(__file__).resolve().parents[1] / "specs"
SPECS = ("mail-assistant", "coding-agent", "payments-agent", "support-agent", "db-operator")


@pytest.fixture(scope="module")
def loaded() -> dict[str, Any]:
    return {name: load_policy([SPECS_DIR / name]) for name in SPECS}


def test_the_corpus_is_exactly_the_five_specs():
    found = sorted(p.name for p in SPECS_DIR.iterdir() if p.is_dir())
    assert found == sorted(SPECS)


@pytest.mark.parametrize("name", SPECS)
def test_spec_loads_without_diagnostics(name, loaded):
    result = loaded[name]
    shown = [f"{d.span.start if d.span else '?'}: {d.code}: {d.message}" for d in result.diagnostics]
    assert shown == []
    assert result.policy is not None
    assert result.policy.name == name
    assert len(result.modules) >= 2, "a spec is a multi-file policy set"


@pytest.mark.parametrize("name", SPECS)
def test_spec_unit_tests_pass_with_full_rule_coverage(name):
    run = testing.run([SPECS_DIR / name / "tests"], load=load_policy, decide=decide,
                      session_error=SessionFileError, threshold=100.0)
    assert [str(p) for p in run.problems] == []
    assert run.policy_failures == ()
    failures = [(r.case.where, r.case.name, r.error,
                 [(m.field, m.expected, m.actual) for m in r.mismatches])
                for r in run.results if r.status != "pass"]
    assert failures == []
    assert len(run.results) >= 20
    (coverage,) = run.coverage
    assert coverage.uncovered == ()
    assert run.exit_code() == 0


def test_loading_all_specs_is_fast(loaded):
    # The parser's tables are built on first use (by the fixture); time the loads alone.
    start = time.perf_counter()
    for name in SPECS:
        assert load_policy([SPECS_DIR / name]).policy is not None
    elapsed = time.perf_counter() - start
    print(f"loading the five specs took {elapsed * 1000:.1f} ms")
    assert elapsed < 1.0


# ---- every construct of the language is used somewhere ----------------------------------

REQUIRED_FEATURES = frozenset(
    {f"type:{t}" for t in ast.PRIM_TYPES}
    | {"type:enum", "type:list", "type:optional", "param:default", "param:sensitive",
       "returns:none", "returns:untrusted", "returns:tagged", "returns:absent", "tool:effects",
       "tool:wraps", "decl:labels", "decl:tags", "decl:env", "const:set", "const:list",
       "const:scalar", "default:allow", "default:deny", "rule:priority", "rule:because",
       "modify:set", "modify:redact", "modify:set-env", "modify:set-const", "step_up:args",
       "defer:args", "rule:no-condition", "sel:tool", "sel:glob", "sel:any", "sel:effects",
       "sel:union", "assert:never", "assert:always", "assert:several-decisions",
       "assert:no-condition", "quant:all", "quant:any", "from:user", "from:untrusted",
       "from:tool", "from:tools", "count:within", "count:unwindowed", "session:used",
       "session:tags", "session:level", "session:actions", "has:param", "has:context",
       "guard:and", "guard:or", "not", "and", "or", "len", "matches", "matches:i",
       "lit:negative-int", "lit:decimal", "lit:set", "field:email", "field:url"}
    | {f"op:{op}" for op in ast.CMP_OPS}
    | {f"ctx:{c}" for c in ("intent.text", "intent.entities", "intent.tools", "intent.score",
                            "risk.injection", "risk.confidence", "risk.drift", "identity.role",
                            "identity.scopes", "identity.delegated", "identity.principal")}
    | {f"effect:{e}" for e in ast.EFFECTS}
)


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if attrs.has(type(node)):
        for field in attrs.fields(type(node)):
            yield from _walk(getattr(node, field.name))
    elif isinstance(node, (tuple, list)):
        for item in node:
            yield from _walk(item)


def _features(module: ast.Module) -> set[str]:
    out: set[str] = set()
    for node in _walk(module.decls):
        match node:
            case ast.PrimType(name=name):
                out.add(f"type:{name}")
            case ast.EnumType():
                out.add("type:enum")
            case ast.ListType():
                out.add("type:list")
            case ast.OptType():
                out.add("type:optional")
            case ast.ParamDecl(default=default, sensitive=sensitive):
                out |= {"param:default"} if default is not None else set()
                out |= {"param:sensitive"} if sensitive else set()
            case ast.ToolDecl(returns=returns, effects=effects, wraps=wraps):
                out |= {"returns:absent"} if returns is None else set()
                out |= {"tool:effects"} if effects else set()
                out |= {"tool:wraps"} if wraps is not None else set()
            case ast.Returns(none=none, untrusted=untrusted, tags=tags):
                out |= {"returns:none"} if none else set()
                out |= {"returns:untrusted"} if untrusted else set()
                out |= {"returns:tagged"} if tags else set()
            case ast.LabelsDecl():
                out.add("decl:labels")
            case ast.TagsDecl():
                out.add("decl:tags")
            case ast.EnvDecl():
                out.add("decl:env")
            case ast.DefaultDecl(posture=posture):
                out.add(f"default:{posture}")
            case ast.ConstDecl(value=value):
                kind = {ast.SetLit: "set", ast.ListLit: "list"}.get(type(value), "scalar")
                out.add(f"const:{kind}")
            case ast.RuleDecl(effect=effect, priority=priority, because=because, condition=cond, selector=sel):
                out.add(f"effect:{effect}")
                out |= {"rule:priority"} if priority is not None else set()
                out |= {"rule:because"} if because else set()
                out |= {"rule:no-condition"} if cond is None else set()
                out |= {"sel:union"} if len(sel.items) > 1 else set()
            case ast.ModifyArgs(sets=sets, redacts=redacts):
                out |= {"modify:set"} if sets else set()
                out |= {"modify:redact"} if redacts else set()
                for a in sets:
                    if isinstance(a.value, ast.PathRef) and a.value.parts[0] == "env":
                        out.add("modify:set-env")
                    elif isinstance(a.value, ast.PathRef) and len(a.value.parts) == 1:
                        out.add("modify:set-const")
            case ast.StepUpArgs():
                out.add("step_up:args")
            case ast.DeferArgs():
                out.add("defer:args")
            case ast.SelItem(kind=kind, name=name):
                out.add("sel:glob" if kind == "tool" and "*" in name else f"sel:{kind}")
            case ast.AssertDecl(kind=kind, decisions=decisions, condition=cond):
                out.add(f"assert:{kind}")
                out |= {"assert:several-decisions"} if len(decisions) > 1 else set()
                out |= {"assert:no-condition"} if cond is None else set()
            case ast.Quant(kind=kind):
                out.add(f"quant:{kind}")
            case ast.From(source=source):
                if source.kind == "tools":
                    out.add("from:tools" if len(source.selector.items) > 1 else "from:tool")
                else:
                    out.add(f"from:{source.kind}")
            case ast.Count(within=within):
                out.add("count:within" if within is not None else "count:unwindowed")
            case ast.Used():
                out.add("session:used")
            case ast.SessionRef(parts=parts):
                out.add(f"session:{parts[0]}")
            case ast.Has(path=path):
                out.add("has:param" if path.parts[0] == "params" else "has:context")
            case ast.And(items=items):
                out.add("and")
                if any(isinstance(i, ast.Has) for i in items):
                    out.add("guard:and")
            case ast.Or(items=items):
                out.add("or")
                if any(isinstance(i, ast.Not) and isinstance(i.operand, ast.Has) for i in items):
                    out.add("guard:or")
            case ast.Not():
                out.add("not")
            case ast.Len():
                out.add("len")
            case ast.Matches(flags=flags):
                out.add("matches:i" if flags == "i" else "matches")
            case ast.Cmp(op=op):
                out.add(f"op:{op}")
            case ast.IntLit(value=v) if v < 0:
                out.add("lit:negative-int")
            case ast.DecLit():
                out.add("lit:decimal")
            case ast.SetLit():
                out.add("lit:set")
            case ast.PathRef(parts=parts):
                if parts[0] in ("intent", "risk", "identity") and len(parts) > 1:
                    out.add(f"ctx:{parts[0]}.{parts[1]}")
                if len(parts) > 2 and parts[-1] in ("domain", "local"):
                    out.add("field:email")
                if len(parts) > 2 and parts[-1] in ("host", "scheme"):
                    out.add("field:url")
    return out


def test_the_specs_use_every_construct(loaded):
    used: set[str] = set()
    for name in SPECS:
        for module in loaded[name].modules:
            used |= _features(module)
    assert sorted(REQUIRED_FEATURES - used) == []


def test_the_mail_assistant_keeps_the_design_examples_rules(loaded):
    example = load_policy([Path(__file__).parent / "data" / "language_example.aarm"])
    assert example.policy is not None
    mail = {r.id: r for r in loaded["mail-assistant"].policy.rules}
    for rule in example.policy.rules:
        assert rule.id in mail
        kept = mail[rule.id]
        assert (kept.effect, kept.priority, kept.tools, kept.condition, kept.assignments,
                kept.approvers, kept.timeout_s) == (rule.effect, rule.priority, rule.tools, rule.condition,
                                                    rule.assignments, rule.approvers, rule.timeout_s)


# ---- the language manual ------------------------------------------------------------------

MANUAL = Path(__file__).resolve().parents[1] / "docs" / "language.md"
GRAMMAR = Path(__file__).resolve().parents[1] / "grammar" / "aarmc.lark"


def _fenced(text: str, lang: str) -> list[tuple[int, str]]:
    """(line, body) of every fenced block tagged `lang` in a markdown text."""
    out, body, start = [], None, 0
    for number, line in enumerate(text.splitlines(), 1):
        if body is None and line.strip() == f"```{lang}":
            body, start = [], number + 1
        elif body is not None and line.strip() == "```":
            out.append((start, "\n".join(body) + "\n"))
            body = None
        elif body is not None:
            body.append(line)
    return out


def _manual_examples() -> list[tuple[int, str]]:
    return _fenced(MANUAL.read_text("utf-8"), "aarm")


@pytest.mark.parametrize("line,text", _manual_examples(), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_every_manual_example_loads_cleanly(line, text):
    result = load_policy_text(text, name=f"docs/language.md:{line}")
    assert [(d.code, d.message, d.span.start if d.span else None) for d in result.diagnostics] == []


def test_the_manual_has_examples():
    assert len(_manual_examples()) >= 5


def test_the_manual_embeds_the_grammar_verbatim():
    (block,) = [body for _, body in _fenced(MANUAL.read_text("utf-8"), "lark")]
    assert block == GRAMMAR.read_text("utf-8")


def test_every_code_the_manual_cites_is_documented():
    documented = set(re.findall(r"AARM-E[0-9]{4}", (MANUAL.parent / "diagnostics.md").read_text("utf-8")))
    cited = set(re.findall(r"AARM-E[0-9]{4}", MANUAL.read_text("utf-8")))
    assert len(cited) >= 20
    assert sorted(cited - documented) == []


def test_the_manuals_design_example_is_the_design_example():
    design = (Path(__file__).parent / "data" / "language_example.aarm").read_text("utf-8")
    assert _manual_examples()[0][1] == design.rstrip("\n") + "\n"


# ---- asserts hold on sampled actions and sessions -----------------------------------------
#
# Until `aarmc check` proves them, each assert is tried on sampled actions of
# its tools in sampled sessions: values come from the spec's own test cases,
# the policy's literals and boundary numbers around them; sessions from the
# test cases, with sections dropped or replaced and history entries that make
# the action's values appear in tool outputs and in the user's request (so
# that provenance premises are exercised). Whenever the assert's condition is
# true, the reference interpreter's decision must satisfy the assert.

# Per tool: at least MIN_SAMPLES tries, then stop once TARGET of them met the
# premise (or after MAX_SAMPLES tries).
MIN_SAMPLES, TARGET, MAX_SAMPLES = 100, 15, 800
NOW = "2026-11-26T12:00:00Z"


def _spec_cases(name: str) -> list[testing.Case]:
    files = testing.discover([SPECS_DIR / name / "tests"])
    return [case for f in files for case in testing.read_test_file(f).cases]


def _literals(policy: ir.Policy) -> list[Any]:
    """Every literal value a rule or assert compares with (boundaries live there)."""
    found: list[Any] = [v for _, v in policy.consts]
    nodes = [r.condition for r in policy.rules] + [a.condition for a in policy.asserts]
    for node in _walk(nodes):
        if isinstance(node, ir.Lit):
            found.append(node.value)
    flat: list[Any] = []
    for v in found:
        flat.extend(v if isinstance(v, (tuple, frozenset)) else [v])
    return flat


def _numbers_near(literals: list[Any]) -> list[Any]:
    out: list[Any] = [0, 1, -1]
    for v in literals:
        if isinstance(v, bool) or not isinstance(v, (int, Decimal)):
            continue
        out += [v - 1, v, v + 1, Decimal(v) + Decimal("0.01"), Decimal(v) - Decimal("0.01")]
    return out


def _pool(policy: ir.Policy, cases: list[testing.Case]) -> dict[tuple[str, str], list[Any]]:
    """(tool, param) -> raw JSON values seen for it in the spec's cases."""
    pool: dict[tuple[str, str], list[Any]] = {}
    for case in cases:
        action = case.action
        params = action.get("params") or {}
        tool = action.get("tool")
        if isinstance(params, dict):
            for k, v in params.items():
                pool.setdefault((tool, k), []).append(v)
    return pool


def _sample_value(rng: random.Random, t: Any, seen: list[Any], literals: list[Any], numbers: list[Any]) -> Any:
    if seen and rng.random() < 0.5:
        return rng.choice(seen)
    if isinstance(t, EnumT):
        return rng.choice(t.values)
    if isinstance(t, ListT):
        return [_sample_value(rng, t.elem, [], literals, numbers) for _ in range(rng.choice([0, 1, 1, 2, 3]))]
    assert isinstance(t, Prim)
    strings = [v for v in literals if isinstance(v, str)]
    if t.name == "bool":
        return rng.choice([True, False])
    if t.name in ("int", "decimal"):
        ints = [n for n in numbers if isinstance(n, int)]
        choice = rng.choice(ints if t.name == "int" else numbers)
        return choice
    if t.name == "email":
        domains = [s for s in strings if "." in s and " " not in s and "/" not in s] or ["corp.example"]
        return rng.choice(["bob@", "mallory@", "jane.roe@"]) + rng.choice(domains + ["evil.example"])
    if t.name == "url":
        hosts = [s for s in strings if "." in s and " " not in s and "/" not in s and "@" not in s]
        return f"https://{rng.choice(hosts or ['x.example'])}/p"
    if t.name == "path":
        return rng.choice(["/workspace/a.txt", "/srv/exports/x.csv", "notes.md"])
    if t.name == "json":
        return rng.choice([{}, {"a": 1}, [1, 2], {"a": 1, "b": 2, "c": 3, "d": 4}])
    return rng.choice(strings + ["hello", "rm -rf /", "DROP TABLE users", "all"]) if strings else "hello"


def _tokens(params: dict[str, Any]) -> list[str]:
    """The canonical texts of the action's scalar values (what provenance looks for)."""
    out = []
    for v in params.values():
        for item in v if isinstance(v, tuple) else (v,):
            token = values.canonical_token(item)
            if token is not None:
                out.append(token)
    return out


def _sample_session(rng: random.Random, policy: ir.Policy, sessions: list[Any], tool: ir.Tool,
                    params: dict[str, Any], hinted: list[str], literals: list[Any]) -> dict[str, Any]:
    """A session derived from a test case's, mutated; `hinted` tools are the ones the
    assert's provenance tests name, so that their outputs are sampled more often."""
    base = rng.choice(sessions)
    session: dict[str, Any] = dict(base) if base else {}
    for key in ("identity", "intent", "env", "risk", "now"):
        if rng.random() < 0.2:
            session.pop(key, None)
    if rng.random() < 0.5:
        session["env"] = {v.name: _sample_value(rng, v.type, [], literals, [0, 1]) for v in policy.env
                          if rng.random() < 0.8}
    if rng.random() < 0.3:
        session["risk"] = {k: rng.choice([Decimal(0), Decimal("0.3"), Decimal("0.45"), Decimal("0.61"),
                                          Decimal("0.8"), Decimal("0.95")])
                           for k in ir.RISK_KEYS if rng.random() < 0.7}
    if rng.random() < 0.3:
        session["identity"] = {"principal": rng.choice(["alice", "bob"]),
                               "role": rng.choice(["dba", "tier1", "release-bot", "developer"]),
                               "scopes": rng.sample(["payments:write", "payments:read", "mail"], rng.randint(0, 2)),
                               "delegation": rng.choice([[], [{"from": "a", "to": "b"}]])}
    history = list(session.get("history", []))
    tokens = _tokens(params)
    tool_names = [t.name for t in policy.tools if t.wraps is None]
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        output = " ".join(rng.sample(tokens, min(len(tokens), rng.randint(0, 2)))) or "nothing here"
        source = rng.choice(hinted) if hinted and rng.random() < 0.5 else rng.choice(tool_names)
        history.append({"tool": source, "output": f"note: {output}", "time": NOW})
    if rng.random() < 0.25:
        burst = rng.choice([1, 4, 5, 9, 10, 19, 20, 24, 25, 49, 50, 200])
        history += [{"tool": tool.name, "time": NOW}] * burst
    session["history"] = history
    if rng.random() < 0.7:
        session["now"] = NOW
    if rng.random() < 0.4 and tokens:
        named = rng.sample(tokens, rng.randint(0, len(tokens)))
        session["intent"] = {"text": "please handle " + " ".join(named), "entities": named,
                             "tools": [tool.name], "score": rng.choice([Decimal("0.2"), Decimal("0.9")])}
    return session


def _schema(tool: ir.Tool) -> list[values.ParamSpec]:
    return [values.ParamSpec(name=p.name, type=p.type, default=p.default, has_default=p.has_default,
                             optional=p.optional) for p in tool.params]


def _asserts(name: str) -> list[tuple[str, str]]:
    policy = load_policy([SPECS_DIR / name]).policy
    return [(name, a.name) for a in policy.asserts]


@attrs.frozen(kw_only=True)
class Sampled:
    premise_true: int
    counterexample: str | None


def sample_assert(policy: ir.Policy, claim: ir.Assert, cases: list[testing.Case], seed: str) -> Sampled:
    """Try `claim` on sampled (action, session) pairs; the first violation, if any."""
    pool = _pool(policy, cases)
    literals = _literals(policy)
    numbers = _numbers_near(literals)
    sessions = [c.session for c in cases] + [None]
    rng = random.Random(seed)
    sources = [node for node in _walk(claim.condition) if isinstance(node, ir.From)]
    hinted = sorted({t for node in sources for t in node.tools}
                    | {t.name for t in policy.tools if any(node.source == "untrusted" for node in sources)
                       and (t.output.untrusted or not t.output.declared) and t.wraps is None})
    premise_true = 0
    for tool_name in claim.tools:
        tool = policy.tool(tool_name)
        seen_actions = [c.action.get("params") or {} for c in cases if c.action.get("tool") == tool_name]
        schema = _schema(tool)
        met = 0
        for i in range(MAX_SAMPLES):
            if i >= MIN_SAMPLES and met >= TARGET:
                break
            fresh = {p.name: _sample_value(rng, p.type, pool.get((tool_name, p.name), []), literals, numbers)
                     for p in tool.params if not (p.optional or p.has_default) or rng.random() < 0.6}
            if seen_actions and i % 3 != 2:
                raw = dict(rng.choice(seen_actions))
                if i % 3 == 1 and fresh:  # a case from the spec with one value changed
                    key = rng.choice(sorted(fresh))
                    raw[key] = fresh[key]
            else:
                raw = fresh
            try:
                params = values.validate_params(schema, raw)
            except values.InvalidValue:
                continue
            session = values.load_json(values.canonical_json(
                _sample_session(rng, policy, sessions, tool, params, hinted, literals)))
            try:
                context = derive_context(policy, read_session(session))
            except InvalidContext:
                continue
            premise = truth(claim.condition, Scope(policy=policy, tool=tool, params=params, context=context))
            if premise is not True:
                continue
            premise_true += 1
            met += 1
            record = decide(policy, {"tool": tool_name, "params": raw}, session)
            holds = (record.decision not in claim.decisions if claim.kind == "never"
                     else record.decision in claim.decisions)
            if not holds:
                return Sampled(premise_true=premise_true,
                               counterexample=f"{tool_name} {raw} in {session} -> {record.to_json()}")
    return Sampled(premise_true=premise_true, counterexample=None)


@pytest.mark.parametrize("name,assert_name",
                         [pair for name in SPECS for pair in _asserts(name)])
def test_assert_holds_on_sampled_cases(name, assert_name, loaded):
    policy: ir.Policy = loaded[name].policy
    (claim,) = [a for a in policy.asserts if a.name == assert_name]
    result = sample_assert(policy, claim, _spec_cases(name), seed=f"{name}/{assert_name}")
    assert result.counterexample is None, f"assert `{assert_name}` fails: {result.counterexample}"
    # A sampler that never meets the premise proves nothing: make sure it did.
    assert result.premise_true >= 5, (
        f"only {result.premise_true} samples satisfied the premise of `{assert_name}`")


@pytest.mark.parametrize("name,assert_name,mutation", [
    # The opposite of a true assert must be refuted by the same sampler.
    ("mail-assistant", "inbox is readable", {"kind": "never"}),
    ("payments-agent", "transfers over the threshold need a human", {"decisions": ("step_up",), "kind": "never"}),
    ("db-operator", "conflicting window signals never let a write through", {"decisions": ("defer",),
                                                                              "kind": "never"}),
    ("support-agent", "internal notes never reach customers", {"decisions": ("modify",)}),
])
def test_the_sampler_refutes_false_asserts(name, assert_name, mutation, loaded):
    policy: ir.Policy = loaded[name].policy
    (claim,) = [a for a in policy.asserts if a.name == assert_name]
    false_claim = attrs.evolve(claim, **mutation)
    result = sample_assert(policy, false_claim, _spec_cases(name), seed="refute")
    assert result.counterexample is not None
