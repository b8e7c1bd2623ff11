"""The resolver: loading files, names and structure, rules, asserts and the lowered IR."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import attrs
import pytest
from aarm_runtime.values import Email, EnumT, ListT, Prim

from aarmc.diagnostics import render_human
from aarmc.semantics import ir
from aarmc.semantics.load import LoadResult, load_policy, load_policy_text
from aarmc.semantics.resolve import resolve
from aarmc.source import SourceFile
from aarmc.syntax.parser import parse_module

DATA = Path(__file__).resolve().parent / "data"
HEAD = 'policy "p" version "1"\ndefault deny\n'


def load(body: str, head: str = HEAD) -> LoadResult:
    return load_policy_text(head + body, "p.aarm")


def codes(body: str, head: str = HEAD) -> list[str]:
    return [d.code.removeprefix("AARM-") for d in load(body, head).diagnostics]


def ok(body: str, head: str = HEAD) -> ir.Policy:
    result = load(body, head)
    assert result.diagnostics == (), [render_human(d, result.sources) for d in result.diagnostics]
    assert result.policy is not None
    return result.policy


def only(body: str, head: str = HEAD):
    """The single diagnostic of a policy."""
    result = load(body, head)
    assert len(result.diagnostics) == 1, [render_human(d, result.sources) for d in result.diagnostics]
    assert result.policy is None
    return result.diagnostics[0]


# ---- the LANGUAGE.md example -----------------------------------------------------------

def test_language_example_loads_without_diagnostics():
    result = load_policy([DATA / "language_example.aarm"])
    assert result.diagnostics == ()
    policy = result.policy
    assert policy.name == "mail-assistant" and policy.version == "4" and policy.default == "deny"
    assert policy.labels == ("public", "internal", "confidential", "restricted")
    assert [t.name for t in policy.tools] == sorted(t.name for t in policy.tools)
    assert [r.index for r in policy.rules] == list(range(len(policy.rules)))
    rules = {r.id: r for r in policy.rules}
    assert rules["no-drop"].priority == -1 and rules["no-drop"].effect == "forbid"
    assert rules["injected-recipient"].priority == 350 and rules["injected-recipient"].explicit_priority
    assert rules["big-transfer"].approvers == ("finance-oncall",) and rules["big-transfer"].timeout_s == 900
    assert rules["rotate-outside-window"].timeout_s == 300
    assert rules["reads"].tools == ("db.query", "email.read_inbox", "web.get")
    assert rules["cap-rows"].assignments == (ir.Assignment(param="limit", value=ir.Lit(value=100)),)
    assert rules["send-burst"].condition.left == ir.Count(tools=("email.send",), within_s=3600)
    assert [a.name for a in policy.asserts] == ["no external send after pii", "transfers over 1000 need a human",
                                                "inbox is readable"]
    inbox = policy.tool("email.read_inbox")
    assert inbox.output == ir.Output(none=False, level=2, untrusted=True, tags=("pii",))
    assert inbox.params[0].default == "INBOX" and inbox.params[0].has_default and inbox.params[0].optional
    send = policy.tool("email.send")
    assert send.param("body").sensitive and send.param("cc").type == ListT(Prim("email"))
    assert send.param("cc").default == ()
    assert policy.consts == (("internal_domains", frozenset({"corp.example", "corp.internal"})),)
    assert policy.env == (ir.EnvVar(name="maintenance_window", type=Prim("bool")),)
    assert len(policy.sources) == 1 and len(policy.sources[0].sha256) == 64


# ---- files --------------------------------------------------------------------------------

def test_directory_is_one_policy_set_in_path_order(tmp_path):
    (tmp_path / "sub").mkdir()
    # A rule before the tool it names, in an earlier file; header in a later one.
    (tmp_path / "a.aarm").write_text('allow "first" mail.send when params.to.domain == "x.example"\n')
    (tmp_path / "sub" / "b.aarm").write_text('tool mail.send(to: email)\ndeny "second" mail.*\n')
    (tmp_path / "z.aarm").write_text(HEAD + 'allow "third" any\n')
    (tmp_path / "notes.txt").write_text("not a policy")
    result = load_policy([tmp_path])
    assert result.diagnostics == ()
    assert [r.id for r in result.policy.rules] == ["first", "second", "third"]
    assert [s.file for s in result.policy.sources] == [
        (tmp_path / "a.aarm").as_posix(), (tmp_path / "sub" / "b.aarm").as_posix(), (tmp_path / "z.aarm").as_posix()]
    assert set(result.sources) == {s.file for s in result.policy.sources}


def test_files_given_in_any_order_are_sorted(tmp_path):
    (tmp_path / "b.aarm").write_text('deny "b" t.x\n')
    (tmp_path / "a.aarm").write_text(HEAD + 'tool t.x()\nallow "a" t.x\n')
    result = load_policy([tmp_path / "b.aarm", tmp_path / "a.aarm", tmp_path / "a.aarm"])
    assert [r.id for r in result.policy.rules] == ["a", "b"]
    assert len(result.policy.sources) == 2


def test_parse_error_in_one_file_still_resolves_the_others(tmp_path):
    (tmp_path / "a.aarm").write_text(HEAD + 'tool t.x(n: int)\n')
    (tmp_path / "b.aarm").write_text('allow "broken" when\n')
    (tmp_path / "c.aarm").write_text('allow "r" t.x when params.n == "x"\n')
    result = load_policy([tmp_path])
    assert [d.code for d in result.diagnostics] == ["AARM-E0101", "AARM-E0302"]
    assert result.policy is None
    assert len(result.modules) == 2


def test_header_in_a_broken_file_is_not_reported_missing(tmp_path):
    (tmp_path / "a.aarm").write_text(HEAD + 'tool t.x(\n')
    (tmp_path / "b.aarm").write_text('tool t.y()\n')
    result = load_policy([tmp_path])
    assert [d.code for d in result.diagnostics] == ["AARM-E0102"]


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "bad.aarm").write_bytes(HEAD.encode() + b'tool a.b()\n# caf\xe9\n')
    result = load_policy([tmp_path / "bad.aarm", tmp_path / "missing.aarm"])
    got = [(d.code, d.span.line if d.span else None, d.span.col if d.span else None) for d in result.diagnostics]
    assert ("AARM-E0901", 4, 6) in got and ("AARM-E0901", None, None) in got
    assert result.policy is None


def test_no_policy_files(tmp_path):
    (tmp_path / "readme.md").write_text("x")
    assert [d.code for d in load_policy([tmp_path]).diagnostics] == ["AARM-E0902"]
    assert [d.code for d in load_policy([]).diagnostics] == ["AARM-E0902"]


def test_utf8_bom_is_accepted(tmp_path):
    (tmp_path / "p.aarm").write_bytes(b"\xef\xbb\xbf" + HEAD.encode())
    assert load_policy([tmp_path]).diagnostics == ()


# ---- header --------------------------------------------------------------------------------

def test_policy_and_default_exactly_once():
    assert codes('default deny', head="") == ["E0201"]
    assert codes('policy "p" version "1"', head="") == ["E0203"]
    assert codes("", head="") == ["E0201", "E0203"]
    d = only('policy "q" version "2"\n')
    assert d.code == "AARM-E0202" and d.span.line == 3 and d.notes == ("first declared at p.aarm:1:1",)
    d = only('default allow\n')
    assert d.code == "AARM-E0204" and d.notes == ("first declared at p.aarm:2:1",)


def test_default_posture():
    assert ok("", head='policy "p" version "1"\ndefault allow\n').default == "allow"


# ---- names -------------------------------------------------------------------------------------

def test_one_namespace_for_labels_tags_consts_env():
    assert codes("labels a < b\ntags a") == ["E0209"]
    assert codes("tags x\nconst x = 1") == ["E0209"]
    assert codes("const x = 1\nenv x: str") == ["E0209"]
    assert codes("labels a < a") == ["E0209"]
    assert codes("tags t, t") == ["E0209"]
    assert codes("tags t\ntags t") == ["E0209"]
    d = only("env x: str\nconst x = 1")
    assert d.message == "const `x` clashes with the env attribute `x`"
    assert d.notes == ("the env attribute `x` is declared at p.aarm:3:5",)
    ok("labels a < b\ntags c, d\ntags e\nconst f = 1\nenv g: int")


def test_several_tags_declarations_are_one_list():
    assert ok("tags b, a\ntags c").tags == ("b", "a", "c")


@pytest.mark.parametrize("word", ["not", "has", "all", "any", "true", "false"])
def test_reserved_words(word):
    assert codes(f"const {word} = 1") == ["E0211"]
    assert codes(f"labels {word} < b") == ["E0211"]
    assert codes(f"tags {word}") == ["E0211"]
    assert codes(f"env {word}: str") == ["E0211"]


def test_context_roots_cannot_name_bare_names_but_env_may_use_them():
    assert codes("const params = 1") == ["E0211"]
    assert codes("labels intent < b") == ["E0211"]
    ok("env session: str\ntags risk")


def test_duplicate_labels_declaration():
    assert codes("labels a < b\nlabels c") == ["E0210"]


def test_duplicate_tool_and_param():
    assert codes("tool a.b()\ntool a.b(x: int)") == ["E0205"]
    assert codes("tool a.b(x: int, x: str)") == ["E0206"]


def test_duplicate_rule_ids_and_asserts():
    d = only('tool a.b()\nallow "r" a.b\ndeny "r" a.b')
    assert d.code == "AARM-E0207" and d.span.line == 5 and d.notes == ("first used at p.aarm:4:7",)
    assert codes('tool a.b()\nassert "x": never allow a.b\nassert "x": always deny a.b') == ["E0208"]


def test_duplicate_rule_ids_across_files(tmp_path):
    (tmp_path / "a.aarm").write_text(HEAD + 'tool a.b()\nallow "r" a.b\n')
    (tmp_path / "b.aarm").write_text('deny "r" a.b\n')
    result = load_policy([tmp_path])
    (d,) = result.diagnostics
    assert d.code == "AARM-E0207" and d.span.file.endswith("b.aarm") and "a.aarm:4:7" in d.notes[0]


def test_duplicate_enum_value():
    assert codes('tool a.b(m: enum("x", "y", "x"))') == ["E0220"]


# ---- tools ------------------------------------------------------------------------------------------

def test_returns_label_and_tags():
    p = ok("labels lo < hi\ntags pii\ntool a.b() returns hi untrusted tagged pii\ntool a.c() returns none\ntool a.d()")
    assert p.tool("a.b").output == ir.Output(none=False, level=1, untrusted=True, tags=("pii",))
    assert p.tool("a.c").output == ir.Output(none=True)
    # no `returns`: unknown classification = top label, untrusted (R2)
    assert p.tool("a.d").output == ir.Output(none=False, level=1, untrusted=True, declared=False)
    assert codes("labels lo < hi\ntool a.b() returns mid") == ["E0216"]
    d = only("tool a.b() returns secret")
    assert d.code == "AARM-E0216" and "declare them" in d.help
    assert codes("tags pii\ntool a.b() returns none\ntool a.c() returns secret tagged pi") == ["E0216", "E0217"]


def test_param_types_and_defaults():
    p = ok('tool a.b(s: str?, d: decimal = 1, e: enum("x", "y") = "y", l: list[email] = ["A@B.EXAMPLE"], '
           'j: json = [1, "a"], n: int sensitive)')
    t = p.tool("a.b")
    s, d, e, lst, j, n = t.params
    assert (s.optional, s.has_default, s.type) == (True, False, Prim("str")) and s.may_be_absent
    assert d.default == Decimal("1") and isinstance(d.default, Decimal) and not d.may_be_absent
    assert e.type == EnumT(("x", "y")) and e.default == "y"
    assert lst.default == (Email(local="A", domain="b.example"),)
    assert j.default == (1, "a")
    assert n.sensitive and not n.optional


@pytest.mark.parametrize("decl", [
    'tool a.b(n: int = "1")', 'tool a.b(n: int = 1.5)', 'tool a.b(e: email = "bob")', 'tool a.b(b: bool = 1)',
    'tool a.b(m: enum("x") = "y")', 'tool a.b(l: list[int] = {1})', 'tool a.b(u: url = "not a url")',
    'tool a.b(p: path = "../etc")',
])
def test_invalid_defaults(decl):
    assert codes(decl) == ["E0314"]


def test_optional_list_element_and_env_types():
    assert codes("tool a.b(l: list[str?])") == ["E0317"]
    assert codes("env x: str?") == ["E0317"]
    assert codes("env x: json") == ["E0317"]
    assert codes("env x: list[list[str]]") == ["E0317"]
    p = ok('env a: list[email]\nenv b: enum("x")\nenv c: decimal')
    assert [v.name for v in p.env] == ["a", "b", "c"]


def test_wraps():
    p = ok("tool mcp.invoke(server: str, name: str, args: json) wraps params.name with params.args")
    assert p.tool("mcp.invoke").wraps == ir.Wrap(name_param="name", args_param="args")
    assert codes("tool m.i(name: int, args: json) wraps params.name with params.args") == ["E0319"]
    assert codes("tool m.i(name: str, args: str) wraps params.name with params.args") == ["E0319"]
    assert codes("tool m.i(name: str?, args: json) wraps params.name with params.args") == ["E0319"]
    assert codes('tool m.i(name: str, args: json) wraps "x" with params.args') == ["E0319"]
    assert codes("tool m.i(name: str, args: json) wraps params.nam with params.args") == ["E0214"]


def test_consts():
    p = ok('const a = [1, 2.5]\nconst b = {"x", "y"}\nconst c = "s"\nconst d = []\nconst e = true')
    consts = dict(p.consts)
    assert consts["a"] == (Decimal(1), Decimal("2.5")) and all(isinstance(v, Decimal) for v in consts["a"])
    assert consts["b"] == frozenset({"x", "y"}) and consts["c"] == "s" and consts["d"] == () and consts["e"] is True
    assert [n for n, _ in p.consts] == ["a", "b", "c", "d", "e"]
    assert codes('const a = [1, "x"]') == ["E0316"]
    assert codes('const a = [[1]]') == ["E0316"]


def test_invalid_const_is_reported_once():
    assert codes('const a = [1, "x"]\ntool t.x(n: int)\nallow "r" t.x when params.n in a') == ["E0316"]


# ---- selectors -------------------------------------------------------------------------------------

SEL_TOOLS = ("tool email.send()\ntool email.read()\ntool email.x.y()\ntool travel.get_flight()\n"
             "tool travel.get_hotel()\ntool travel.book() effects write\n")


@pytest.mark.parametrize("selector,expected", [
    ("email.*", ("email.read", "email.send")),
    ("email.x.*", ("email.x.y",)),
    ("travel.get_*", ("travel.get_flight", "travel.get_hotel")),
    ("effects write", ("travel.book",)),
    ("email.send, email.send, travel.book", ("email.send", "travel.book")),
    ("any", ("email.read", "email.send", "email.x.y", "travel.book", "travel.get_flight", "travel.get_hotel")),
])
def test_selector_expansion(selector, expected):
    p = ok(SEL_TOOLS + f'allow "r" {selector}')
    assert p.rules[0].tools == expected


@pytest.mark.parametrize("selector,code", [
    ("email.sned", "E0212"), ("mail.*", "E0213"), ("travel.*_x", "E0213"), ("effects read", "E0213"),
])
def test_selector_errors(selector, code):
    assert codes(SEL_TOOLS + f'allow "r" {selector}') == [code]


def test_any_without_tools():
    assert codes('allow "r" any') == ["E0213"]


def test_selectors_inside_conditions():
    p = ok(SEL_TOOLS + 'deny "r" email.send when session.count(email.* within 1h) > 3 and session.used(travel.get_*)'
           ' and "abc" from (email.read, travel.book)')
    cond = p.rules[0].condition
    assert cond.items[0].left == ir.Count(tools=("email.read", "email.send"), within_s=3600)
    assert cond.items[1] == ir.Used(tools=("travel.get_flight", "travel.get_hotel"))
    assert cond.items[2].tools == ("email.read", "travel.book") and cond.items[2].source == "tools"
    assert codes(SEL_TOOLS + 'deny "r" email.send when session.used(nope.*)') == ["E0213"]
    assert codes(SEL_TOOLS + 'deny "r" email.send when "abc" from nope.x') == ["E0212"]


# ---- rules ------------------------------------------------------------------------------------------

def test_priorities():
    p = ok('tool a.b()\nallow "a" a.b\ndeny "d" a.b\nmodify "m" a.b set x = 1\n'
           'step_up "s" a.b approvers ["x"] timeout 1m\ndefer "f" a.b timeout 1h\nforbid "x" a.b\n'
           'allow "p0" priority 0 a.b\nallow "p1000" priority 1000 a.b'.replace("tool a.b()", "tool a.b(x: int)"))
    assert [(r.id, r.priority) for r in p.rules] == [
        ("a", 100), ("d", 300), ("m", 120), ("s", 150), ("f", 200), ("x", -1), ("p0", 0), ("p1000", 1000)]
    assert codes('tool a.b()\nallow "r" priority 1001 a.b') == ["E0401"]
    assert codes('tool a.b()\nforbid "r" priority 1 a.b') == ["E0402"]


def test_effect_arguments():
    assert codes('tool a.b(x: int)\ndeny "r" a.b set x = 1') == ["E0405"]
    assert codes('tool a.b(x: int)\nallow "r" a.b approvers ["a"] timeout 1m') == ["E0405"]
    assert codes('tool a.b(x: int)\nmodify "r" a.b timeout 1m') == ["E0405"]
    assert codes('tool a.b(x: int)\ndefer "r" a.b approvers ["a"] timeout 1m') == ["E0405"]
    assert codes('tool a.b(x: int)\nforbid "r" a.b timeout 1m') == ["E0405"]
    assert codes('tool a.b(x: int)\nmodify "r" a.b') == ["E0406"]
    assert codes('tool a.b(x: int)\nstep_up "r" a.b') == ["E0406"]
    assert codes('tool a.b(x: int)\nstep_up "r" a.b timeout 1m') == ["E0406"]
    assert codes('tool a.b(x: int)\ndefer "r" a.b') == ["E0406"]
    d = only('tool a.b(x: int)\nstep_up "r" a.b approvers [] timeout 1m')
    assert d.code == "AARM-E0407" and "times out to DENY" in d.help


def test_step_up_approvers_deduplicated():
    p = ok('tool a.b()\nstep_up "r" a.b approvers ["x", "y", "x"] timeout 2h')
    assert p.rules[0].approvers == ("x", "y") and p.rules[0].timeout_s == 7200


def test_modify_assignments():
    p = ok('env cap: int\nconst small = 5\nconst names = ["a"]\n'
           'tool a.b(n: int, d: decimal, s: str, t: str, e: email, l: list[str], m: enum("x", "y"), o: int?)\n'
           'modify "r" a.b set n = small, d = 7, s = params.t, e = "Bob@X.Example", l = names, m = "y", '
           'o = env.cap redact t')
    assigns = p.rules[0].assignments
    assert [a.param for a in assigns] == ["n", "d", "s", "e", "l", "m", "o", "t"]
    assert assigns[0].value == ir.Lit(value=5) and assigns[0].value.const == "small"
    assert assigns[1].value.value == Decimal(7) and isinstance(assigns[1].value.value, Decimal)
    assert assigns[2].value == ir.Param(name="t")
    assert assigns[3].value == ir.Lit(value=Email(local="Bob", domain="x.example"))
    assert assigns[4].value == ir.Lit(value=("a",))
    assert assigns[6].value == ir.Ctx(source="env", key="cap")
    assert assigns[7].value == ir.Lit(value=ir.REDACTED)


@pytest.mark.parametrize("args,code", [
    ("set nope = 1", "E0408"),
    ("redact nope", "E0408"),
    ("set n = len(params.s)", "E0409"),
    ("set n = session.actions", "E0409"),
    ("set n = params.n.x", "E0409"),
    ('set n = "1"', "E0410"),
    ("set n = params.s", "E0410"),
    ("set n = params.d", "E0410"),
    ("set n = env.name", "E0410"),
    ("set l = {\"a\"}", "E0410"),
    ('set e = "bob"', "E0410"),
    ('set m = "z"', "E0410"),
    ("set s = params.m", None),
    ("set d = params.n", None),
    ("redact n", "E0411"),
    ("redact e", "E0411"),
    ("set s = \"a\", s = \"b\"", "E0412"),
    ("set s = \"a\" redact s", "E0412"),
    ("set n = params.o", "E0311"),
    ("set n = env.nope", "E0218"),
])
def test_modify_assignment_errors(args, code):
    body = ('env name: str\ntool a.b(n: int, d: decimal, s: str, e: email, m: enum("x", "y"), l: list[str], o: int?)\n'
            f'modify "r" a.b {args}')
    assert codes(body) == ([code] if code else [])


def test_modify_target_must_exist_for_every_selected_tool():
    d = only('tool a.b(x: int)\ntool a.c(y: int)\nmodify "r" a.* set x = 1')
    assert d.code == "AARM-E0408" and d.notes == ("while checking rule `r` for tool `a.c`",)


def test_forbid_reads_only_params():
    for cond in ["env.e", "risk.drift > 0.5", "identity.role == \"x\"", "intent.score > 0.5", "has intent",
                 "\"pii\" in session.tags", "session.actions > 1", "session.count(a.b) > 1", "session.used(a.b)",
                 "has env.e", "has risk.drift"]:
        assert codes(f'env e: bool\ntags pii\ntool a.b(x: str)\nforbid "f" a.b when {cond}') == ["E0403"], cond
    assert codes('tool a.b(x: str)\nforbid "f" a.b when params.x from user') == ["E0404"]
    assert codes('tool a.b(x: str)\nforbid "f" a.b when params.x from a.b') == ["E0404"]
    ok('labels lo < hi\nconst c = {"a"}\ntool a.b(x: str)\n'
       'forbid "f" a.b when params.x in c and hi > lo and params.x matches /a/')
    # the same terms are fine in a deny
    ok('env e: bool\ntool a.b(x: str)\ndeny "d" a.b when env.e and params.x from user')


# ---- asserts -----------------------------------------------------------------------------------------

def test_asserts():
    p = ok('tool a.b(x: int)\ntool a.c(x: int)\nassert "n": never allow, modify a.* when params.x > 1\n'
           'assert "a": always deny a.b')
    n, a = p.asserts
    assert (n.kind, n.decisions, n.tools) == ("never", ("allow", "modify"), ("a.b", "a.c"))
    assert n.condition == ir.Cmp(op=">", left=ir.Param(name="x"), right=ir.Lit(value=1))
    assert a.condition is None
    assert codes('tool a.b()\nassert "n": never allow, deny, allow a.b') == ["E0501"]
    assert codes('tool a.b()\nassert "n": never allow a.x') == ["E0212"]
    assert codes('tool a.b(x: int)\nassert "n": never allow a.b when params.x') == ["E0301"]


# ---- per-tool checking ------------------------------------------------------------------------------

def test_condition_checked_for_every_selected_tool():
    d = only('tool a.b(x: int)\ntool a.c(x: str)\ntool a.d(x: int)\nallow "r" a.* when params.x > 1')
    assert d.code == "AARM-E0303" and d.notes == ("while checking rule `r` for tool `a.c`",)
    d = only('tool a.b(x: str)\ntool a.c(x: int)\ntool a.d(x: int)\nallow "r" a.* when params.x == "s"')
    assert d.code == "AARM-E0302" and d.notes == ("while checking rule `r` for tools `a.c`, `a.d`",)
    # a message naming the tool is reported per tool, each with its own help
    result = load('tool a.b(x: int)\ntool a.c(y: int)\ntool a.d(z: int)\nallow "r" a.* when params.x > 1')
    assert [(d.message, d.help) for d in result.diagnostics] == [
        ("unknown parameter `x` of tool `a.c`", "parameters of `a.c`: `y`"),
        ("unknown parameter `x` of tool `a.d`", "parameters of `a.d`: `z`")]
    d = only('tool a.b(x: int)\ntool a.c(x: int)\nallow "r" a.* when params.x == "s"')
    assert d.notes == ("while checking rule `r` for each tool it selects (`a.b`, `a.c`)",)


def test_same_literal_different_meaning_per_tool():
    assert codes('tool a.b(to: email)\ntool a.c(to: str)\ndeny "r" a.* when params.to == "x@y.example"') == ["E0318"]
    ok('tool a.b(to: email)\ntool a.c(to: email)\ndeny "r" a.* when params.to == "x@y.example"')
    # the same param name with different (but compatible) types is fine without a literal to coerce
    ok('tool a.b(n: int)\ntool a.c(n: decimal)\ndeny "r" a.* when params.n > 1')


def test_diagnostics_are_sorted_and_all_reported():
    result = load('tool a.b(x: int)\nallow "r1" a.b when params.y\nallow "r2" a.x\nallow "r3" a.b when env.q')
    assert [(d.code, d.span.line) for d in result.diagnostics] == [
        ("AARM-E0214", 4), ("AARM-E0212", 5), ("AARM-E0218", 6)]


# ---- performance sanity ------------------------------------------------------------------------------

def test_thousand_rule_policy_loads_quickly():
    lines = [HEAD, "labels public < internal < secret", "tags pii", 'const doms = {"corp.example"}', "env prod: bool"]
    for i in range(50):
        lines.append(f"tool svc{i}.op(to: email, cc: list[email] = [], n: int, note: str?) returns internal tagged pii")
    effects = ["deny", "allow", "modify", "step_up", "defer"]
    for i in range(1000):
        effect = effects[i % 5]
        args = {"modify": "set n = 1", "step_up": 'approvers ["ops"] timeout 5m', "defer": "timeout 1m"}.get(effect, "")
        lines.append(f'{effect} "r{i}" svc{i % 50}.op when params.n > {i} and "pii" in session.tags '
                     f'and (params.to.domain not in doms or any c in params.cc: c.domain not in doms) {args}')
    text = "\n".join(lines)
    load_policy_text(HEAD)  # build the parser outside the measurement
    start = time.perf_counter()
    module, _ = parse_module(SourceFile(name="big.aarm", text=text))
    parsed = time.perf_counter()
    policy, diags = resolve([module])
    resolved = time.perf_counter()
    result = load_policy_text(text)
    print(f"\n1,000-rule policy: parse {parsed - start:.3f}s, resolve and type-check {resolved - parsed:.3f}s")
    assert diags == [] and len(policy.rules) == 1000
    assert attrs.evolve(result.policy, sources=()) == policy
    # sanity bounds, not a benchmark (shared CI machines vary)
    assert resolved - parsed < 10 and parsed - start < 30


def test_language_reference_fragments():
    """The constructs LANGUAGE.md §3–§4 show inline, outside the §2 example."""
    p = ok('''
tool mcp.invoke(server: str, name: str, args: json) wraps params.name with params.args
tool travel.get_flight(to: str) returns none
tool travel.get_hotel(city: str) returns none
tool email.send(to: email, cc: list[email] = [], note: str?) returns none effects external
tool a.b(x: str) returns none
tool c.d(x: str) returns none
tool api.call(body: json) returns none
allow "globs" email.*, travel.get_*
deny "ext" effects external when any x in params.cc: x from untrusted
allow "named" email.send when all x in params.cc: x from user
deny "prov" email.send when params.to from (a.b, c.d)
deny "guard" email.send when has params.note and params.note contains "urgent"
deny "guard2" email.send when not (has params.note) or params.note contains "x"
deny "json" api.call when len(params.body) > 10 and params.body == 1
''')
    assert p.rules[0].tools == ("email.send", "travel.get_flight", "travel.get_hotel")
    assert p.rules[1].tools == ("email.send",)


def test_rules_never_select_meta_tools():
    """A call through a meta-tool is decided as the tool it wraps (LANGUAGE.md §3),
    so `any`/globs leave meta-tools out and naming one is an error."""
    p = ok('''
tool mcp.invoke(name: str, args: json) wraps params.name with params.args
tool mcp.list(x: str) returns none
allow "all" any
allow "glob" mcp.*
''')
    assert p.rules[0].tools == ("mcp.list",)
    assert p.rules[1].tools == ("mcp.list",)
    assert codes('''
tool mcp.invoke(name: str, args: json) wraps params.name with params.args
deny "d" mcp.invoke
''') == ["E0413"]


def test_len_is_reserved():
    """`len` starts an operand, so a const named `len` could never be read."""
    assert "E0211" in codes('const len = 5\n')
