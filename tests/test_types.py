"""Type checking of conditions (aarmc.semantics.types): every operator, positive and negative."""

from __future__ import annotations

from decimal import Decimal

import pytest
from aarm_runtime.values import Email, EnumT, ListT, Path, Prim, Url

from aarmc.diagnostics import render_human
from aarmc.semantics import ir
from aarmc.semantics.load import load_policy_text
from aarmc.semantics.types import (BOOL, DECIMAL, EMAIL, INT, LABEL, STR, TAGS, SetT, assignable, ctx_type,
                                   elem_type, expr_type, same_type, show)

HEAD = '''policy "p" version "1"
default deny
labels public < internal < secret
tags pii, fin
const doms = {"corp.example", "corp.internal"}
const names = ["alice", "bob"]
const limit = 10
const ratio = 0.5
const flag = true
const hosts = ["https://a.example/x"]
env region: str
env window: bool
env owner: email
env allowed: list[email]
tool t.x(s: str, n: int, d: decimal, b: bool, e: email, u: url, p: path, m: enum("fast", "safe"),
         l: list[str], le: list[email], li: list[int], j: json, o: str?, od: int = 3, ol: list[email]?)
'''


def check(cond: str, extra: str = ""):
    result = load_policy_text(HEAD + extra + f'\ndeny "r" t.x when {cond}\n', "p.aarm")
    return result


def codes(cond: str, extra: str = "") -> list[str]:
    return [d.code.removeprefix("AARM-") for d in check(cond, extra).diagnostics]


def lowered(cond: str, extra: str = "") -> ir.Expr:
    result = check(cond, extra)
    assert result.diagnostics == (), [render_human(d, result.sources) for d in result.diagnostics]
    return result.policy.rules[-1].condition


def only(cond: str, extra: str = ""):
    result = check(cond, extra)
    assert len(result.diagnostics) == 1, [render_human(d, result.sources) for d in result.diagnostics]
    return result.diagnostics[0]


# ---- conditions must be bool ----------------------------------------------------------------------

@pytest.mark.parametrize("cond", [
    "params.b", "flag", "env.window", "identity.delegated", "session.used(t.x)", "true", "not params.b",
    "params.b and params.b", "params.b or false", "any x in params.l: x == \"a\"", "has intent",
])
def test_bool_conditions(cond):
    lowered(cond)


@pytest.mark.parametrize("cond,where", [
    ("params.s", "condition"), ("params.n and params.b", "an operand of `and`"),
    ("params.b or params.l", "an operand of `or`"), ("not params.d", "the operand of `not`"),
    ("all x in params.l: x", "a quantifier body"), ("limit", "condition"), ("session.actions", "condition"),
    ("len(params.s)", "condition"), ("env.region", "condition"),
])
def test_non_bool_conditions(cond, where):
    d = only(cond)
    assert d.code == "AARM-E0301" and d.message.startswith(where)


# ---- references ----------------------------------------------------------------------------------

def test_reference_lowering():
    cond = lowered('params.e.domain == "x" and params.u.host == "h" and params.u.scheme == "https" '
                   'and params.u.path == "/" and params.e.local == "l" and env.owner.domain == "d" '
                   'and risk.injection < 0.5 and identity.role == "r" and intent.text contains "x" '
                   'and session.level >= internal and session.actions < limit')
    items = cond.items
    assert items[0].left == ir.Field(base=ir.Param(name="e"), name="domain")
    assert items[5].left == ir.Field(base=ir.Ctx(source="env", key="owner"), name="domain")
    assert items[6].left == ir.Ctx(source="risk", key="injection")
    assert items[9] == ir.Cmp(op=">=", left=ir.Ctx(source="session", key="level"),
                              right=ir.Label(name="internal", level=1))
    assert items[10].right == ir.Lit(value=10) and items[10].right.const == "limit"


@pytest.mark.parametrize("cond,code", [
    ("params.zz == 1", "E0214"), ("params == 1", "E0214"), ("nope == 1", "E0215"), ("pii == 1", "E0215"),
    ("env.nope", "E0218"), ("env == 1", "E0218"), ("risk.nope > 1", "E0219"), ("identity.nope == \"x\"", "E0219"),
    ("intent.nope == \"x\"", "E0219"), ("intent == 1", "E0219"), ("session.nope > 1", "E0219"),
    ("params.e.host == \"x\"", "E0222"), ("params.s.x == \"x\"", "E0222"), ("params.u.domain == \"x\"", "E0222"),
    ("params.e.domain.x == \"x\"", "E0222"), ("session.tags.x", "E0222"), ("limit.x == 1", "E0222"),
    ("risk.drift.x == 1", "E0222"),
])
def test_reference_errors(cond, code):
    assert codes(cond) == [code]


def test_unknown_name_suggests_a_close_one():
    assert only("params.s in nmaes").help == "did you mean `names`?"


def test_session_level_needs_labels():
    head = 'policy "p" version "1"\ndefault deny\ntool t.x()\n'
    result = load_policy_text(head + 'deny "r" t.x when session.level == 1', "p.aarm")
    assert [d.code for d in result.diagnostics] == ["AARM-E0223"]


# ---- comparisons -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cond", [
    "params.n == 1", "params.n == 1.5", "params.d != params.n", "params.n > params.d", "params.d <= ratio",
    "params.s == \"x\"", "params.b == true", "params.m == \"fast\"", "params.m != \"safe\"",
    "params.l == []", "params.l == names", "params.li == [1, 2]", "params.j == 1", "params.j == [1, 2]",
    "params.j == \"s\"", "params.j != params.j", "session.level < secret", "internal > public",
    "session.level == secret", "risk.drift >= 0.5", "intent.score > 0", "session.count(t.x) >= limit",
    "len(params.l) > 1", "len(params.j) == 0", "len(params.s) < 5", "len(names) == 2", "len(session.tags) > 0",
    "len(doms) == 2", "params.e == env.owner",
])
def test_comparisons_ok(cond):
    lowered(cond)


@pytest.mark.parametrize("cond,code", [
    ("params.n == \"1\"", "E0302"), ("params.s == 1", "E0302"), ("params.b == 1", "E0302"),
    ("params.e == params.s", "E0302"), ("params.m == params.s", "E0302"), ("params.j == params.s", "E0302"),
    ("session.level == 1", "E0302"), ("params.l == [1]", "E0302"), ("params.l == doms", "E0302"),
    ("params.s < \"b\"", "E0303"), ("params.b > false", "E0303"), ("session.level > 1", "E0303"),
    ("params.e >= params.e", "E0303"), ("params.j > 1", "E0315"),
    ("params.m == \"slow\"", "E0313"),
    ("params.e == \"bob\"", "E0314"), ("params.u == \"not a url\"", "E0314"), ("params.p == \"../x\"", "E0314"),
    ("len(params.n) > 1", "E0308"), ("len(params.e) > 1", "E0308"), ("len(params.b) > 1", "E0308"),
])
def test_comparison_errors(cond, code):
    assert codes(cond) == [code]


def test_string_literal_compared_with_email_url_path_is_coerced():
    cond = lowered('params.e == "Bob@Corp.EXAMPLE" and "https://A.example/x" != params.u and params.p == "/tmp/a"')
    assert cond.items[0].right == ir.Lit(value=Email(local="Bob", domain="corp.example"))
    assert isinstance(cond.items[1].left.value, Url) and cond.items[1].left.value.host == "a.example"
    assert isinstance(cond.items[2].right.value, Path)


def test_enum_literal_stays_a_string():
    assert lowered('params.m == "fast"').right == ir.Lit(value="fast")


def test_coercion_reports_the_bad_element():
    d = only('params.e in ["a@b.example", "nope", "c@d.example"]')
    assert d.code == "AARM-E0314" and d.span.col == len('deny "r" t.x when params.e in ["a@b.example", ') + 1


# ---- membership and string operators -----------------------------------------------------------------

@pytest.mark.parametrize("cond", [
    "params.e.domain in doms", "params.s not in names", "params.s in [\"a\", \"b\"]", "params.n in [1, 2]",
    "params.d in [1, 2.5]", "params.n in [1.5]", "\"pii\" in session.tags", "\"fin\" not in session.tags",
    "params.s in session.tags", "session.tags contains \"pii\"", "\"x\" in identity.scopes",
    "params.s in intent.entities", "\"t.x\" in intent.tools", "params.l contains \"a\"",
    "params.le contains \"a@b.example\"", "params.e in env.allowed", "params.e in [\"a@b.example\"]",
    "params.m in [\"fast\"]", "params.s contains \"x\"", "params.s startswith \"x\"", "params.e.domain endswith \".x\"",
    "params.u.host endswith params.s", "intent.text contains params.e.local", "params.s in []", "params.b in [true]",
])
def test_membership_ok(cond):
    lowered(cond)


def test_every_invalid_const_element_is_reported():
    result = check("params.e in names")
    assert [d.message for d in result.diagnostics] == [
        '`"alice"` is not a valid `email`: expected an email: no `@`',
        '`"bob"` is not a valid `email`: expected an email: no `@`']


def test_membership_coerces_list_literals_and_consts():
    cond = lowered('params.e in ["A@B.example"] and params.e in okset',
                   extra='const okset = {"x@y.example"}')
    assert cond.items[0].right.value == (Email(local="A", domain="b.example"),)
    assert cond.items[1].right.value == frozenset({Email(local="x", domain="y.example")})
    assert cond.items[1].right.const == "okset"
    cond = lowered('params.le contains "Q@R.example"')
    assert cond == ir.Cmp(op="contains", left=ir.Param(name="le"), right=ir.Lit(value=Email(local="Q", domain="r.example")))


@pytest.mark.parametrize("cond,code", [
    ("params.s in \"abc\"", "E0304"), ("params.s in params.n", "E0304"), ("params.n in names", "E0304"),
    ("params.l in names", "E0304"), ("params.m in [\"slow\"]", "E0313"),
    ("\"pi\" in session.tags", "E0217"), ("params.n in session.tags", "E0304"), ("session.tags contains \"x\"", "E0217"),
    ("params.j in [1]", "E0315"), ("params.j contains 1", "E0315"), ("params.j startswith \"x\"", "E0315"),
    ("params.e endswith \".x\"", "E0305"), ("params.s startswith 1", "E0305"), ("params.n contains 1", "E0305"),
    ("params.u contains \"x\"", "E0305"), ("params.m startswith \"f\"", "E0305"),
    ("params.li contains \"1\"", "E0304"),
])
def test_membership_errors(cond, code):
    assert codes(cond) == [code]


# ---- matches -------------------------------------------------------------------------------------------

def test_matches():
    assert lowered("params.s matches /a+b/i") == ir.Match(value=ir.Param(name="s"), pattern="a+b", flags="i")
    lowered("params.e.domain matches /\\.example$/")
    assert codes("params.n matches /1/") == ["E0306"]
    assert codes("params.e matches /x/") == ["E0306"]


@pytest.mark.parametrize("pattern,offset", [("ab(?=c)", 2), ("a\\1", 1), ("(?i)x", 0), ("x*?", 2), ("[b-a]", 1)])
def test_regex_outside_subset_points_at_the_construct(pattern, offset):
    d = only(f"params.s matches /{pattern}/")
    assert d.code == "AARM-E0307"
    slash = len('deny "r" t.x when params.s matches ') + 1
    assert d.span.col == slash + 1 + offset
    assert d.span.line == HEAD.count("\n") + 2


# ---- from -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cond", [
    "params.s from user", "params.e from untrusted", "params.u from t.x", "params.n from (t.x, t.*)",
    "params.d from user", "params.m from user", "params.p from user", "params.e.domain from user",
    "all x in params.le: x from user", "any x in params.l: x from untrusted",
])
def test_from_ok(cond):
    lowered(cond)


@pytest.mark.parametrize("cond", ["params.le from user", "params.b from user", "params.j from user",
                                  "names from user"])
def test_from_needs_a_scalar(cond):
    d = only(cond)
    assert d.code == "AARM-E0309"


def test_from_list_help():
    assert only("params.le from user").help == "write `all x in params.le: x from user`"


# ---- quantifiers -------------------------------------------------------------------------------------------

def test_quantifier_variable_types():
    cond = lowered('any c in params.le: c.domain in doms and c != "x@y.example"')
    assert cond == ir.Quant(kind="any", var="c", collection=ir.Param(name="le"), body=ir.And(items=(
        ir.Cmp(op="in", left=ir.Field(base=ir.Var(name="c"), name="domain"), right=ir.Lit(value=frozenset(
            {"corp.example", "corp.internal"}))),
        ir.Cmp(op="!=", left=ir.Var(name="c"), right=ir.Lit(value=Email(local="x", domain="y.example"))))))
    lowered("all d in doms: params.s endswith d")
    lowered("all x in identity.scopes: x != \"admin\"")
    lowered("any n in params.li: n > 3")


def test_quantifier_scoping():
    lowered("any s in params.l: s == params.s")  # shadowing a param name is fine (params are qualified)
    lowered("(any x in params.l: x == \"a\") and (all x in params.li: x > 1)")  # siblings, not shadowing
    assert codes("any x in params.l: any x in params.l: x == \"a\"") == ["E0221"]
    assert codes("any limit in params.li: limit > 1") == ["E0221"]
    assert codes("any secret in params.li: secret > 1") == ["E0221"]
    assert codes("any x in params.l: true") == []
    assert codes("any x in params.s: true") == ["E0310"]
    assert codes("any x in session.tags: true") == ["E0310"]
    assert codes("any x in params.j: true") == ["E0310"]
    # the variable is out of scope after the quantifier's (parenthesised) body
    assert codes("(any x in params.l: x == \"a\") and x == \"b\"") == ["E0215"]


@pytest.mark.parametrize("word", ["not", "has", "all", "any", "true", "false", "params", "env", "session"])
def test_reserved_quantifier_variables(word):
    result = check(f"any {word} in params.l: params.b")
    got = [d.code for d in result.diagnostics]
    # a keyword that the grammar accepts as a name gets E0211; one it rejects is a syntax error
    assert got in (["AARM-E0211"], ["AARM-E0101"])


# ---- has and flow typing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cond", [
    "has params.o and params.o == \"x\"",
    "has params.o and params.b and params.o == \"x\"",
    "has params.o and (params.o == \"x\" or params.o == \"y\")",
    "has params.o and not (params.o == \"x\")",
    "has params.o and any x in params.l: x == params.o",
    "not (has params.o) or params.o == \"x\"",
    "not has params.o or params.b or params.o == \"x\"",
    "params.b and (has params.o and params.o == \"x\")",
    "has params.ol and any c in params.ol: c.domain in doms",
    "(has params.o and params.o == \"a\") or params.b",
    "(has params.o and params.b) and params.o == \"x\"",  # `and` is flattened: the guard still comes first
    "has env.region and env.region == \"eu\"", "has risk.drift", "has identity.role", "has intent",
    "has intent.text", "not (has intent)",
])
def test_guarded_reads(cond):
    lowered(cond)


@pytest.mark.parametrize("cond", [
    "params.o == \"x\"",
    "params.o == \"x\" and has params.o",
    "has params.o or params.o == \"x\"",
    "params.b and params.o == \"x\"",
    "(has params.o) == true and params.o == \"x\"",
    "not (not (has params.o)) and params.o == \"x\"",
    "not (has params.o) and params.o == \"x\"",
    "(has params.o or params.b) and params.o == \"x\"",
    "len(params.o) > 1",
    "params.o from user",
    "any c in params.ol: true",
])
def test_unguarded_reads(cond):
    assert "E0311" in codes(cond)


def test_guard_does_not_leak_into_sibling_rules_or_other_params():
    assert codes("has params.o and params.ol == []") == ["E0311"]


def test_guard_lowers_to_has():
    cond = lowered('has params.o and params.o == "x"')
    assert cond.items[0] == ir.Has(target=ir.Param(name="o"))
    assert lowered("has intent") == ir.Has(target=ir.Ctx(source="intent", key=""))
    assert lowered("has env.region") == ir.Has(target=ir.Ctx(source="env", key="region"))


@pytest.mark.parametrize("cond,help_part", [
    ("has params.od", "`od` has a default, so it is always present"),
    ("has params.s", "`s` is required, so it is always present"),
    ("has params.e.domain", "not a field"),
    ("has session.tags", "session attributes are always present"),
    ("has limit", "`limit` is always present"),
    ("has env", "`has env.NAME`"),
    ("has risk", "`has risk.NAME`"),
])
def test_has_not_applicable(cond, help_part):
    d = only(cond)
    assert d.code == "AARM-E0312" and help_part in d.help


@pytest.mark.parametrize("cond,code", [("has params.zz", "E0214"), ("has env.zz", "E0218"),
                                       ("has risk.zz", "E0219"), ("has intent.zz", "E0219"), ("has zz", "E0215")])
def test_has_unknown_names(cond, code):
    assert codes(cond) == [code]


# ---- the public type API -----------------------------------------------------------------------------------

def test_expr_type_api():
    result = check('params.b')
    policy = result.policy
    tool = policy.tool("t.x")
    assert expr_type(ir.Param(name="o"), tool, policy) == STR  # never OptT
    assert expr_type(ir.Param(name="le"), tool, policy) == ListT(EMAIL)
    assert expr_type(ir.Field(base=ir.Param(name="e"), name="domain"), tool, policy) == STR
    assert expr_type(ir.Ctx(source="env", key="allowed"), tool, policy) == ListT(EMAIL)
    assert expr_type(ir.Ctx(source="session", key="level"), tool, policy) == LABEL
    assert expr_type(ir.Ctx(source="session", key="tags"), tool, policy) == TAGS
    assert expr_type(ir.Ctx(source="identity", key="scopes"), tool, policy) == ListT(STR)
    assert expr_type(ir.Ctx(source="intent", key="score"), tool, policy) == DECIMAL
    assert expr_type(ir.Count(tools=("t.x",)), tool, policy) == INT
    assert expr_type(ir.Lit(value=frozenset({"a"})), tool, policy) == SetT(STR)
    assert expr_type(ir.Lit(value=(1, Decimal("2.5"))), tool, policy) == ListT(DECIMAL)
    assert expr_type(ir.Var(name="c"), tool, policy, {"c": EMAIL}) == EMAIL
    assert expr_type(ir.Cmp(op="==", left=ir.Lit(value=1), right=ir.Lit(value=1)), tool, policy) == BOOL
    assert elem_type(ListT(EMAIL)) == EMAIL and elem_type(SetT(STR)) == STR
    assert ctx_type("risk", "drift", policy) == DECIMAL
    with pytest.raises(KeyError):
        ctx_type("env", "nope", policy)
    with pytest.raises(KeyError):
        expr_type(ir.Param(name="nope"), tool, policy)


def test_every_rule_param_has_a_type_in_the_lowered_example():
    """The Z3 encoder's use: walk a lowered condition, typing every node per tool."""
    from pathlib import Path as FsPath

    from aarmc.semantics.load import load_policy
    policy = load_policy([FsPath(__file__).parent / "data" / "language_example.aarm"]).policy

    def walk(expr, tool, vars):
        t = expr_type(expr, tool, policy, vars)
        assert t is not None
        if isinstance(expr, ir.Quant):
            walk(expr.collection, tool, vars)
            walk(expr.body, tool, {**vars, expr.var: elem_type(expr_type(expr.collection, tool, policy, vars))})
            return
        for child in ("left", "right", "operand", "value", "base", "arg"):
            if hasattr(expr, child) and isinstance(getattr(expr, child), tuple(ir.Expr.__args__)):
                walk(getattr(expr, child), tool, vars)
        for item in getattr(expr, "items", ()):
            walk(item, tool, vars)

    count = 0
    for rule in policy.rules:
        for name in rule.tools:
            if rule.condition is not None:
                walk(rule.condition, policy.tool(name), {})
                count += 1
    assert count > 10


def test_type_relations():
    assert same_type(INT, DECIMAL) and not same_type(STR, EMAIL)
    assert same_type(EnumT(("a", "b")), EnumT(("b", "a"))) and not same_type(EnumT(("a",)), EnumT(("b",)))
    assert assignable(EnumT(("a",)), EnumT(("a", "b"))) and not assignable(EnumT(("a", "c")), EnumT(("a", "b")))
    assert assignable(ListT(INT), ListT(DECIMAL)) and not assignable(STR, EMAIL)
    assert show(ListT(EnumT(("a",)))) == 'list[enum("a")]' and show(Prim("json")) == "json"


def test_paths_take_string_operations_on_their_normalised_text():
    """`params.p startswith "/workspace/"` and `matches` work on paths (the normalised text)."""
    from aarmc.reference import decide
    from aarmc.semantics.load import load_policy_text

    result = load_policy_text('policy "p" version "1"\ndefault deny\n'
                              'tool fs.write(p: path, data: str) returns none\n'
                              'allow "in-workspace" fs.write when params.p startswith "/workspace/"'
                              ' and not (params.p matches /\\.env$/)\n')
    assert result.diagnostics == ()
    decide_p = lambda p: decide(result.policy, {"tool": "fs.write", "params": {"p": p, "data": ""}}).decision
    assert decide_p("/workspace//src/./a.py") == "allow"
    assert decide_p("/workspace/.env") == "deny"
    assert decide_p("/etc/passwd") == "deny"
    assert decide_p("/workspace/../etc/passwd") == "deny"  # `..` makes the params invalid
