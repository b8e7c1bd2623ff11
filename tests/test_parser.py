"""Targeted parser tests: precedence, quantifier extent, contextual keywords, comments, spans, syntax errors."""

from __future__ import annotations

from decimal import Decimal

import pytest

from aarmc.source import SourceFile, Span
from aarmc.syntax import ast
from aarmc.syntax.parser import MAX_NESTING, parse_module


def parse(text: str) -> ast.Module:
    module, diags = parse_module(SourceFile(name="p.aarm", text=text))
    assert not diags, diags[0].headline()
    return module


def cond(text: str) -> ast.Expr:
    return parse(f'allow "r" t.x when {text}').decls[0].condition


def error(text: str):
    module, diags = parse_module(SourceFile(name="p.aarm", text=text))
    assert module is None and len(diags) == 1
    return diags[0]


P = lambda *parts: ast.PathRef(parts=parts)  # noqa: E731
a, b, c, d = P("a"), P("b"), P("c"), P("d")


# ---- precedence ---------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("a or b and c", ast.Or(items=(a, ast.And(items=(b, c))))),
    ("a and b or c", ast.Or(items=(ast.And(items=(a, b)), c))),
    ("not a and b", ast.And(items=(ast.Not(operand=a), b))),
    ("not a == b", ast.Not(operand=ast.Cmp(op="==", left=a, right=b))),
    ("a not in b", ast.Cmp(op="not in", left=a, right=b)),
    ("not a in b", ast.Not(operand=ast.Cmp(op="in", left=a, right=b))),
    ("has a == b", ast.Cmp(op="==", left=ast.Has(path=a), right=b)),
    ("not has a.x", ast.Not(operand=ast.Has(path=P("a", "x")))),
    ("a or b or c and d", ast.Or(items=(a, b, ast.And(items=(c, d))))),
    ("(a or b) and (c or d)", ast.And(items=(ast.Or(items=(a, b)), ast.Or(items=(c, d))))),
    ("a and (b and c) and d", ast.And(items=(a, b, c, d))),
    ("len(a) >= 2", ast.Cmp(op=">=", left=ast.Len(arg=a), right=ast.IntLit(value=2))),
    ("a from user", ast.From(value=a, source=ast.Source(kind="user"))),
    ("a from (x.y, any)", ast.From(value=a, source=ast.Source(kind="tools", selector=ast.Selector(
        items=(ast.SelItem(kind="tool", name="x.y"), ast.SelItem(kind="any")))))),
])
def test_precedence(text, expected):
    assert cond(text) == expected


@pytest.mark.parametrize("op", ["==", "!=", "<", "<=", ">", ">=", "in", "startswith", "endswith", "contains"])
def test_comparisons_are_non_associative(op):
    assert error(f'allow "r" t.x when a {op} b {op} c').code == "AARM-E0101"
    assert cond(f"(a {op} b) {op} c") == ast.Cmp(op=op, left=ast.Cmp(op=op, left=a, right=b), right=c)


def test_literals():
    assert cond("a == -7") == ast.Cmp(op="==", left=a, right=ast.IntLit(value=-7))
    assert cond("a == -0.50").right == ast.DecLit(value=Decimal("-0.5"))
    assert cond('a in ["x\\"y", 1, {true}]').right == ast.ListLit(items=(
        ast.StrLit(value='x"y'), ast.IntLit(value=1), ast.SetLit(items=(ast.BoolLit(value=True),))))
    assert cond("a matches /x\\/y/i") == ast.Matches(value=a, pattern="x\\/y", flags="i")


# ---- quantifiers ----------------------------------------------------------------------

def _q(kind, var, coll, body):
    return ast.Quant(kind=kind, var=ast.Name(value=var), collection=coll, body=body)


@pytest.mark.parametrize("text, expected", [
    ("all x in l: a and b", _q("all", "x", P("l"), ast.And(items=(a, b)))),
    ("all x in l: a or b", _q("all", "x", P("l"), ast.Or(items=(a, b)))),
    ("a and all x in l: b or c", ast.And(items=(a, _q("all", "x", P("l"), ast.Or(items=(b, c)))))),
    ("a or any x in l: b", ast.Or(items=(a, _q("any", "x", P("l"), b)))),
    ("(all x in l: a) and b", ast.And(items=(_q("all", "x", P("l"), a), b))),
    ("not all x in l: a and b", ast.Not(operand=_q("all", "x", P("l"), ast.And(items=(a, b))))),
    ("all x in l: any y in x: y == a", _q("all", "x", P("l"), _q("any", "y", P("x"), ast.Cmp(op="==", left=P("y"), right=a)))),
])
def test_quantifier_body_extends_right(text, expected):
    assert cond(text) == expected


def test_quantifier_must_be_last_or_parenthesised():
    assert error('allow "r" t.x when a == all x in l: x').code == "AARM-E0101"
    assert error('allow "r" t.x when len(all x in l: x) > 1').code == "AARM-E0101"


# ---- contextual keywords --------------------------------------------------------------

def test_keywords_usable_as_param_names():
    m = parse('tool a.b(path: path, url: url, email: email, user: str, json: json?, untrusted: bool) returns none\n'
              'allow "r" a.b when params.path startswith "/tmp" and params.user from user\n'
              '    and params.url.host == "x" and params.email.domain in d and params.untrusted')
    tool, rule = m.decls
    assert [p.name.value for p in tool.params] == ["path", "url", "email", "user", "json", "untrusted"]
    assert [p.type for p in tool.params[:3]] == [ast.PrimType(name=n) for n in ("path", "url", "email")]
    first, second, *_ = rule.condition.items
    assert first.left == P("params", "path")
    assert second == ast.From(value=P("params", "user"), source=ast.Source(kind="user"))


def test_keywords_usable_as_other_declared_names():
    m = parse("labels none < all\ntags in, from\nenv when: bool\nconst count = 1\n"
              "tool a.b() returns low tagged from effects not\n"
              'allow "r" a.b when any in in params.l: in == count and session.count(effects not) < 1')
    assert [n.value for n in m.decls[0].names] == ["none", "all"]
    assert m.decls[2].name.value == "when"
    quant = m.decls[5].condition
    assert quant.var.value == "in" and quant.body.items[0] == ast.Cmp(op="==", left=P("in"), right=P("count"))


def test_keyword_where_it_competes_with_a_name_is_the_keyword():
    assert error("tool a.b() returns none untrusted").code == "AARM-E0101"
    assert isinstance(cond("session.count(t.x) > 0").left, ast.Count)
    assert cond("not a") == ast.Not(operand=a)


# ---- comments and spans ------------------------------------------------------------------

def test_comments_are_kept_with_their_lines():
    m = parse('# head\npolicy "p" version "1"  # tail  \n\n# "not # nested"\ndefault deny\n#')
    assert [(c.line, c.text) for c in m.comments] == [
        (1, "# head"), (2, "# tail"), (4, '# "not # nested"'), (6, "#")]


def test_comments_do_not_take_part_in_equality():
    assert parse("# x\ndefault deny") == parse("default deny # y")


def test_spans_of_key_nodes():
    text = ('tool email.send(to: email) returns none\n'
            'deny "no-ext" priority 300 email.send, db.*\n'
            '    when params.to.domain != "corp.example"\n'
            '     and params.to matches /x/i\n'
            '    because "b"\n')
    tool, rule = parse(text).decls
    span = lambda l, c, el, ec: Span(file="p.aarm", line=l, col=c, end_line=el, end_col=ec)  # noqa: E731
    assert tool.span == span(1, 1, 1, 40)
    assert tool.name.span == span(1, 6, 1, 16)
    assert tool.params[0].name.span == span(1, 17, 1, 19)
    assert rule.span == span(2, 1, 5, 16)
    assert rule.id_span == span(2, 6, 2, 14)
    assert rule.priority_span == span(2, 24, 2, 27)
    assert [i.span for i in rule.selector.items] == [span(2, 28, 2, 38), span(2, 40, 2, 44)]
    first, second = rule.condition.items
    assert rule.condition.span == span(3, 10, 4, 32)
    assert first.span == span(3, 10, 3, 44)
    assert first.left.span == span(3, 10, 3, 26)
    assert second.pattern_span == span(4, 28, 4, 32)


def test_session_term_spans_cover_session_keyword():
    e = cond("session.count(t.x within 1h) > session.tags")
    assert (e.left.span.col, e.left.span.end_col) == (20, 48)
    assert (e.right.span.col, e.right.span.end_col) == (51, 63)


# ---- syntax errors -----------------------------------------------------------------------

@pytest.mark.parametrize("text, code, line, col, message", [
    ('policy "p" version "1"\ndefault maybe', "AARM-E0101", 2, 9, "unexpected `maybe`"),
    ('allow "r" t.x when a == b == c', "AARM-E0101", 1, 27, "unexpected `==`"),
    ('forbid r t.x', "AARM-E0101", 1, 8, "unexpected `r`"),
    ('allow "r" t.x when', "AARM-E0102", 1, 19, "unexpected end of input"),
    ('policy "p"\n', "AARM-E0102", 1, 11, "unexpected end of input"),
    ('const s = "abc', "AARM-E0103", 1, 11, "unterminated or invalid string"),
    ('const s = "a\\q"', "AARM-E0103", 1, 11, "unterminated or invalid string"),
    ('allow "r" t.x when x matches /abc', "AARM-E0103", 1, 30, "unterminated regular expression"),
    ('allow "r" t.x when x ~ 1', "AARM-E0103", 1, 22, "unexpected character `~`"),
    ('default deny\nconst s = 1\x01', "AARM-E0103", 2, 12, "unsupported character U+0001"),
    ('tool a.*()', "AARM-E0104", 1, 6, "a declared tool name cannot contain `*`: `a.*`"),
    ('const x = 9223372036854775808', "AARM-E0105", 1, 11, "integer `9223372036854775808` is out of range"),
    ('const x = -' + "0" * 5000 + "9" * 20, "AARM-E0105", 1, 11, None),
    ('allow "r" priority ' + "9" * 5000 + " t.x", "AARM-E0105", 1, 20, None),
    ('defer "d" t.x timeout 0m', "AARM-E0106", 1, 23, "duration `0m` must be positive"),
    ('defer "d" t.x timeout 367d', "AARM-E0106", 1, 23, "duration `367d` is longer than a year"),
    ('deny "d" t.x when session.count(t.x within ' + "9" * 5000 + "s) > 1", "AARM-E0106", 1, 44, None),
])
def test_syntax_error_codes_and_locations(text, code, line, col, message):
    diag = error(text)
    assert (diag.code, diag.severity, diag.span.file, diag.span.line, diag.span.col) == (code, "error", "p.aarm", line, col)
    if message is not None:
        assert diag.message == message
    assert diag.message == diag.message.rstrip(".") and diag.message[:1].islower()


def test_errors_say_what_was_expected():
    assert error('policy "p" version "1"\ndefault maybe').help == "expected `allow`, `deny`"
    assert error('policy "p"').help == "expected `version`"


def test_leading_zeros_are_not_out_of_range():
    assert parse("const x = " + "0" * 5000 + "7").decls[0].value == ast.IntLit(value=7)
    step = parse('defer "d" t.x timeout ' + "0" * 5000 + "5m").decls[0]
    assert step.args.timeout == ast.Duration(seconds=300)


# ---- nesting -------------------------------------------------------------------------------

def test_deep_parentheses_are_fine():
    assert cond("(" * 500 + "a" + ")" * 500) == a


def test_long_flat_chains_are_fine():
    e = cond(" and ".join(["a"] * 3000) + " or b")
    assert isinstance(e, ast.Or) and len(e.items[0].items) == 3000


def test_nesting_limit_boundary():
    ok = cond("not " * (MAX_NESTING - 1) + "a")
    depth = 0
    while isinstance(ok, ast.Not):
        ok, depth = ok.operand, depth + 1
    assert depth == MAX_NESTING - 1
    diag = error('allow "r" t.x when ' + "not " * MAX_NESTING + "a")
    assert diag.code == "AARM-E0107" and diag.message == "expression nested too deeply"


@pytest.mark.parametrize("text, col", [
    ('allow "r" t.x when ' + "not " * 500 + "a", 20 + 4 * MAX_NESTING),
    ('allow "r" t.x when ' + "len(" * 500 + "a" + ")" * 500, 20 + 4 * MAX_NESTING),
    ('allow "r" t.x when ' + "all v in l: " * 500 + "a", 20 + 12 * (MAX_NESTING - 1) + 9),  # the 64th `l`
    ('allow "r" t.x when ' + "(a == " * 500 + "a" + ")" * 500, None),
    ("const x = " + "[" * 500 + "]" * 500, 11 + MAX_NESTING),
    ("env e: " + "list[" * 500 + "int" + "]" * 500, 8 + 5 * MAX_NESTING),
])
def test_deep_nesting_is_a_located_error(text, col):
    diag = error(text)
    assert diag.code == "AARM-E0107" and diag.span is not None and diag.span.line == 1
    if col is not None:
        assert diag.span.col == col
