"""The canonical printer: parentheses, literals, layout, comments."""

from __future__ import annotations

import textwrap
from decimal import Decimal

import pytest

from aarmc.source import SourceFile
from aarmc.syntax import ast
from aarmc.syntax.parser import parse_module
from aarmc.syntax.printer import (
    WIDTH,
    format_decimal,
    format_duration,
    format_expr,
    format_module,
    format_string,
)


def parse(text: str) -> ast.Module:
    module, diags = parse_module(SourceFile(name="p.aarm", text=text))
    assert not diags, diags[0].headline()
    return module


def fmt(text: str) -> str:
    return format_module(parse(textwrap.dedent(text)))


def cond(text: str) -> ast.Expr:
    return parse(f'allow "r" t.x when {text}').decls[0].condition


def fx(text: str) -> str:
    """The canonical one-line spelling of a condition."""
    printed = format_expr(cond(text))
    assert cond(printed) == cond(text)
    return printed


# ---- parentheses ---------------------------------------------------------------

@pytest.mark.parametrize("source, expected", [
    ("(a or b) and c", "(a or b) and c"),
    ("a or (b and c)", "a or b and c"),
    ("((a))", "a"),
    ("(a or b) or c", "a or b or c"),
    ("a and (b and c)", "a and b and c"),
    ("not (a == b)", "not a == b"),
    ("not (a and b)", "not (a and b)"),
    ("not (not a)", "not not a"),
    ("(not a) == b", "(not a) == b"),
    ("(a == b) == c", "(a == b) == c"),
    ("a == (b == c)", "a == (b == c)"),
    ("(has x) == true", "has x == true"),
    ("len((a == b)) > 1", "len((a == b)) > 1"),
    ("len(has x)", "len(has x)"),
    ("(x matches /a/) == false", "(x matches /a/) == false"),
    ("(x from user) == (y from untrusted)", "(x from user) == (y from untrusted)"),
    ("a and (b or c) and d", "a and (b or c) and d"),
    ("(a and b) or (c and d)", "a and b or c and d"),
])
def test_minimal_parentheses(source, expected):
    assert fx(source) == expected


@pytest.mark.parametrize("source, expected", [
    # A quantifier's body runs to the right: bare only as the last operand.
    ("a and all x in l: p", "a and all x in l: p"),
    ("a and (all x in l: p or q)", "a and all x in l: p or q"),
    ("(all x in l: p) and a", "(all x in l: p) and a"),
    ("(all x in l: p) or a", "(all x in l: p) or a"),
    ("a or b and any x in l: p", "a or b and any x in l: p"),
    ("(a and any x in l: p) or b", "a and (any x in l: p) or b"),
    ("not (all x in l: p)", "not all x in l: p"),
    ("not (all x in l: p) and a", "not (all x in l: p) and a"),
    ("(all x in l: p) == true", "(all x in l: p) == true"),
    ("all x in l: all y in x: p and q", "all x in l: all y in x: p and q"),
    ("all x in l: (all y in x: p) and q", "all x in l: (all y in x: p) and q"),
    ("any x in (l): x from user", "any x in l: x from user"),
])
def test_quantifier_parentheses(source, expected):
    assert fx(source) == expected


def test_nested_or_inside_and_is_parenthesised():
    a, b, c = (ast.PathRef(parts=(n,)) for n in "abc")
    assert format_expr(ast.And(items=(a, ast.Or(items=(b, c))))) == "a and (b or c)"
    assert format_expr(ast.Not(operand=ast.Or(items=(b, c)))) == "not (b or c)"


# ---- leaves -----------------------------------------------------------------------

def test_strings_are_re_escaped():
    text = r'const s = "q\"b\\s\nn\tt\/s"'
    assert fmt(text) == 'const s = "q\\"b\\\\s\\nn\\tt/s"\n'
    assert parse(fmt(text)).decls[0].value.value == 'q"b\\s\nn\tt/s'
    assert format_string("a\u00e9\U0001F600") == '"a\u00e9\U0001F600"'


def test_unprintable_values_are_refused():
    with pytest.raises(ValueError, match="U\\+0000"):
        format_string("a\x00")
    with pytest.raises(ValueError, match="no literal form"):
        format_decimal(Decimal("NaN"))


@pytest.mark.parametrize("value, expected", [
    ("1.50", "1.50"), ("-0.5", "-0.5"), ("1E+2", "100.0"), ("1E-7", "0.0000001"),
    ("12345678901234567890.123456789", "12345678901234567890.123456789"), ("0", "0.0"),
])
def test_decimals_exact_without_exponent(value, expected):
    assert format_decimal(Decimal(value)) == expected
    assert parse(f"const d = {expected}").decls[0].value == ast.DecLit(value=Decimal(value))


@pytest.mark.parametrize("seconds, expected", [
    (1, "1s"), (59, "59s"), (60, "1m"), (90, "90s"), (900, "15m"), (3600, "1h"), (5400, "90m"),
    (7200, "2h"), (86400, "1d"), (172800, "2d"), (90000, "25h"), (31622400, "366d"),
])
def test_durations_in_largest_exact_unit(seconds, expected):
    assert format_duration(seconds) == expected


def test_durations_are_normalised_in_files():
    out = fmt('defer "d" t.x timeout 3600s\ndeny "c" t.x when session.count(t.x within 120s) > 1')
    assert "timeout 1h" in out and "within 2m" in out


def test_numbers_and_collections():
    assert fx("x > -5 and y in [1, -2, 3.0] and z in {}") == "x > -5 and y in [1, -2, 3.0] and z in {}"
    assert fx("x in [[1], {true, false}, \"s\"]") == 'x in [[1], {true, false}, "s"]'


def test_regex_printed_exactly_as_stored():
    assert fx(r"x matches /a\/b\d+[^\]x]{2,3}(?:c|\.)$/i") == r"x matches /a\/b\d+[^\]x]{2,3}(?:c|\.)$/i"
    m = ast.Matches(value=ast.PathRef(parts=("x",)), pattern=r"drop\s+", flags="")
    assert format_expr(m) == r"x matches /drop\s+/"


def test_types_and_tool_clauses():
    src = ('tool a.b(x: list[enum("p", "q")?]? = [] sensitive, y: json, z: decimal = 1.0) '
           'returns secret untrusted tagged pii, pci effects external wraps params.x with params.y')
    assert fmt(src) == (
        'tool a.b(x: list[enum("p", "q")?]? = [] sensitive, y: json, z: decimal = 1.0)\n'
        "    returns secret untrusted tagged pii, pci effects external wraps params.x with params.y\n")


# ---- layout -----------------------------------------------------------------------

def test_rule_layout_header_then_clauses():
    src = ('modify "cap" priority 10 db.query when params.limit > 100 set limit = 100, offset = params.o '
           'redact sql because "caps"\n'
           'step_up "big" bank.send when params.amount > 1000 approvers ["a", "b"] timeout 15m\n'
           'allow "reads" a.b, c.*, any, effects read')
    assert fmt(src) == textwrap.dedent('''\
        modify "cap" priority 10 db.query
            when params.limit > 100
            set limit = 100, offset = params.o
            redact sql
            because "caps"

        step_up "big" bank.send
            when params.amount > 1000
            approvers ["a", "b"] timeout 15m

        allow "reads" a.b, c.*, any, effects read
        ''')


def test_long_conditions_break_one_operand_per_line():
    long_a = "params.recipient_account_number"
    src = (f'deny "r" bank.send when {long_a} from untrusted and not ({long_a} from user) '
           f'and ({long_a} not in known_accounts or any c in params.cc: c.domain not in internal_domains_list)')
    assert fmt(src) == textwrap.dedent('''\
        deny "r" bank.send
            when params.recipient_account_number from untrusted
                 and not params.recipient_account_number from user
                 and (params.recipient_account_number not in known_accounts
                      or any c in params.cc: c.domain not in internal_domains_list)
        ''')


def test_broken_and_inside_or_gets_parentheses():
    a = "params.some_rather_long_parameter_name"
    src = f'deny "r" t.x when {a} == 1 and {a} == 2 and {a} == 3 or {a} == 4'
    assert fmt(src) == textwrap.dedent(f'''\
        deny "r" t.x
            when ({a} == 1
                  and {a} == 2
                  and {a} == 3)
                 or {a} == 4
        ''')


def test_long_quantifier_body_aligns_under_its_first_operand():
    src = ('allow "r" t.x when all c in params.recipients_list: c.domain in internal_domains '
           'and c.local != "postmaster" and c.local != "abuse"')
    assert fmt(src) == textwrap.dedent('''\
        allow "r" t.x
            when all c in params.recipients_list: c.domain in internal_domains
                                                  and c.local != "postmaster"
                                                  and c.local != "abuse"
        ''')


def test_long_tool_params_const_and_selector():
    params = ", ".join(f"parameter_{i}: str" for i in range(6))
    src = (f"tool svc.op({params}) returns none\n"
           f"const domains = {{{', '.join(f'{chr(34)}domain-{i}.example.com{chr(34)}' for i in range(6))}}}\n"
           f"allow \"many\" {', '.join(f'service_{i}.operation_{i}' for i in range(7))}\n")
    out = fmt(src)
    assert out == textwrap.dedent('''\
        tool svc.op(
                parameter_0: str,
                parameter_1: str,
                parameter_2: str,
                parameter_3: str,
                parameter_4: str,
                parameter_5: str)
            returns none

        const domains = {
            "domain-0.example.com",
            "domain-1.example.com",
            "domain-2.example.com",
            "domain-3.example.com",
            "domain-4.example.com",
            "domain-5.example.com"
        }

        allow "many" service_0.operation_0, service_1.operation_1, service_2.operation_2,
                service_3.operation_3, service_4.operation_4, service_5.operation_5, service_6.operation_6
        ''')
    assert all(len(line) <= WIDTH for line in out.splitlines())


def test_assert_layout():
    src = ('assert "p": never allow, modify email.send when "pii" in session.tags\n'
           'assert "q": always allow a.b')
    assert fmt(src) == textwrap.dedent('''\
        assert "p": never allow, modify email.send
            when "pii" in session.tags

        assert "q": always allow a.b
        ''')


def test_declarations_keep_their_order_and_group_by_kind():
    src = ('tool z.last() tool a.first()\n'
           'const b = 1 env a: int policy "p" version "1" default deny tags x labels l < h\n'
           'tool m.mid()\n\n\n\ntool n.next()')
    assert fmt(src) == textwrap.dedent('''\
        tool z.last()
        tool a.first()

        const b = 1
        env a: int

        policy "p" version "1"
        default deny

        tags x
        labels l < h

        tool m.mid()

        tool n.next()
        ''')


def test_messy_layout_is_normalised():
    src = 'policy   "p"\nversion "1"\n\n\n\n\tdefault\n deny\ndeny "r" t.x when\n  a\n  and b because   "c"'
    # The author's blank lines between the header declarations shrink to one.
    assert fmt(src) == 'policy "p" version "1"\n\ndefault deny\n\ndeny "r" t.x\n    when a and b\n    because "c"\n'


# ---- comments ---------------------------------------------------------------------

def test_comments_before_and_after_declarations():
    src = '''\
        # file header
        policy "p" version "1"   # trailing on the header
        default deny
        # about tools


        # still about tools
        tool a.b()
        # closing remark
    '''
    assert fmt(src) == textwrap.dedent('''\
        # file header
        policy "p" version "1"  # trailing on the header
        default deny

        # about tools
        # still about tools
        tool a.b()

        # closing remark
        ''')


def test_comment_inside_a_declaration_moves_to_its_first_line():
    src = '''\
        deny "r" t.x
            when a   # why a
             and b
    '''
    assert fmt(src) == 'deny "r" t.x  # why a\n    when a and b\n'


def test_several_comments_inside_a_declaration_go_before_it_in_order():
    src = '''\
        tags t
        deny "r" t.x   # one
            when a     # two
             and b     # three
    '''
    assert fmt(src) == 'tags t\n\n# one\n# two\n# three\ndeny "r" t.x\n    when a and b\n'


def test_comments_only_and_empty_files():
    assert fmt("# only\n\n# comments\n") == "# only\n# comments\n"
    assert fmt("") == ""
    assert fmt("   \n\n") == ""


def test_comment_characters_inside_strings_and_regexes_are_not_comments():
    out = fmt('deny "#1" t.x when x matches /a#b/ because "# not a comment"')
    assert parse(out).comments == ()
    assert '"#1"' in out and "/a#b/" in out and '"# not a comment"' in out


def test_format_is_idempotent_on_the_example():
    from pathlib import Path
    text = (Path(__file__).parent / "data" / "language_example.aarm").read_text("utf-8")
    once = format_module(parse(text))
    assert format_module(parse(once)) == once
