"""The canonical printer behind `aarmc fmt`: AST → policy text.

`format_module(module)` depends only on the AST, the spans of its declarations
and its comments, so `format_module(parse(format_module(m)))` is
`format_module(m)` and `parse(format_module(m)) == m`.

Layout:
- declarations stay in the order of the file; a blank line separates
  declarations of different kinds, every rule and assert, a declaration with
  comments before it, and declarations the author had already separated by a
  blank line; otherwise consecutive declarations of one kind (header,
  labels/tags, tools, env/const) stay together;
- a rule is `EFFECT "id" [priority N] SELECTOR` on its first line, then
  `when ...`, its effect arguments and `because ...` on continuation lines
  indented by four spaces; an assert is `assert "name": KIND DECISIONS SELECTOR`
  with its `when` on a continuation line;
- a condition that does not fit in `WIDTH` columns is broken at its top-level
  `and` / `or`, one operand per line, each operator aligned with the first
  operand of its chain; a parenthesised chain breaks the same way inside its
  parentheses (an `and` chain broken inside an `or` gets parentheses, which the
  AST does not record, so that the layout shows the grouping);
- parentheses are otherwise the minimum the precedence requires: `or` < `and` <
  `not` < comparisons < `has`, field access, calls, literals; a quantifier's
  body extends to the right, so a quantifier that is not the last operand of
  its `and` / `or` (or of the comparison it sits in) is parenthesised.

Comments: a comment that sits on the lines of a declaration is printed at the
end of that declaration's first line when it is the only one there; every
other comment is printed on its own line before the declaration that starts
after it (comments after the last declaration close the file), in the order of
the file. So a comment is never lost, and `# ...` at the end of a line stays
with its declaration. (A module built in code, without spans, gets its
comments at the end.)

>>> from aarmc.source import SourceFile
>>> from aarmc.syntax.parser import parse_module
>>> m, _ = parse_module(SourceFile(name="p.aarm", text='deny "x" a.b when (p or q) and r because "no"'))
>>> print(format_module(m), end="")
deny "x" a.b
    when (p or q) and r
    because "no"
"""

from __future__ import annotations

import bisect
import re
from decimal import Decimal

from aarmc.syntax import ast

WIDTH = 100
INDENT = "    "

# Binding strength, loosest first. A child printed where a tighter level is
# required gets parentheses.
_OR, _AND, _NOT, _CMP, _OPERAND, _ATOM = range(1, 7)

# The parser rejects these in a file, so a string holding one has no spelling.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


# ---- leaves -------------------------------------------------------------------

def format_string(value: str) -> str:
    """A string literal, escaped so that the grammar reads back `value`.

    >>> print(format_string('say "hi"\\n'))
    "say \\"hi\\"\\n"
    """
    bad = _UNPRINTABLE.search(value)
    if bad is not None:
        raise ValueError(f"string {value!r} holds U+{ord(bad.group()):04X}, which a policy file cannot contain")
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"')
               .replace("\n", "\\n").replace("\t", "\\t"))
    return f'"{escaped}"'


def format_decimal(value: Decimal) -> str:
    """A decimal literal, exactly, without exponent, always with a point.

    >>> format_decimal(Decimal("1E+2")), format_decimal(Decimal("0.10"))
    ('100.0', '0.10')
    """
    if not value.is_finite():
        raise ValueError(f"decimal `{value}` has no literal form")
    text = format(value, "f")
    return text if "." in text else text + ".0"


_UNITS = (("d", 86400), ("h", 3600), ("m", 60))


def format_duration(seconds: int) -> str:
    """A duration in the largest unit that divides it exactly.

    >>> format_duration(3600), format_duration(90), format_duration(900)
    ('1h', '90s', '15m')
    """
    for unit, size in _UNITS:
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def format_type(t: ast.TypeExpr) -> str:
    if isinstance(t, ast.PrimType):
        return t.name
    if isinstance(t, ast.EnumType):
        return "enum(" + ", ".join(format_string(v) for v in t.values) + ")"
    if isinstance(t, ast.ListType):
        return f"list[{format_type(t.elem)}]"
    if isinstance(t, ast.OptType):
        if isinstance(t.inner, ast.OptType):
            raise ValueError("an optional type cannot be optional again")
        return format_type(t.inner) + "?"
    raise TypeError(f"not a type: {t!r}")


def format_selector(sel: ast.Selector) -> str:
    return ", ".join(_sel_item(i) for i in sel.items)


def _sel_item(item: ast.SelItem) -> str:
    if item.kind == "tool":
        return item.name
    if item.kind == "any":
        return "any"
    if item.kind == "effects":
        return f"effects {item.name}"
    raise ValueError(f"unknown selector item kind `{item.kind}`")


def _source(src: ast.Source) -> str:
    if src.kind in ("user", "untrusted"):
        return src.kind
    if src.kind != "tools" or src.selector is None or not src.selector.items:
        raise ValueError(f"invalid provenance source {src!r}")
    if len(src.selector.items) == 1:
        return _sel_item(src.selector.items[0])
    return f"({format_selector(src.selector)})"


# ---- expressions -------------------------------------------------------------

def _prec(e: ast.Expr) -> int:
    if isinstance(e, ast.Or):
        return _OR
    if isinstance(e, ast.And):
        return _AND
    if isinstance(e, (ast.Not, ast.Quant)):
        return _NOT
    if isinstance(e, (ast.Cmp, ast.Matches, ast.From)):
        return _CMP
    if isinstance(e, ast.Has):
        return _OPERAND
    return _ATOM


def _needs_parens(e: ast.Expr, min_prec: int, tail: bool) -> bool:
    # `tail`: nothing of the enclosing expression follows, so a quantifier's
    # body may run to the end.
    return _prec(e) < min_prec or (isinstance(e, ast.Quant) and not tail)


def format_expr(e: ast.Expr, min_prec: int = _OR, tail: bool = True) -> str:
    """An expression on one line with the fewest parentheses that read back the same tree.

    >>> a, b, c = (ast.PathRef(parts=(n,)) for n in "abc")
    >>> format_expr(ast.And(items=(ast.Or(items=(a, b)), ast.Not(operand=c))))
    '(a or b) and not c'
    """
    if _needs_parens(e, min_prec, tail):
        return "(" + format_expr(e) + ")"
    if isinstance(e, ast.StrLit):
        return format_string(e.value)
    if isinstance(e, ast.BoolLit):
        return "true" if e.value else "false"
    if isinstance(e, ast.IntLit):
        return str(e.value)
    if isinstance(e, ast.DecLit):
        return format_decimal(e.value)
    if isinstance(e, ast.ListLit):
        return "[" + ", ".join(format_expr(i, _ATOM) for i in e.items) + "]"
    if isinstance(e, ast.SetLit):
        return "{" + ", ".join(format_expr(i, _ATOM) for i in e.items) + "}"
    if isinstance(e, ast.PathRef):
        return ".".join(e.parts)
    if isinstance(e, ast.SessionRef):
        return "session." + ".".join(e.parts)
    if isinstance(e, ast.Count):
        within = f" within {format_duration(e.within.seconds)}" if e.within is not None else ""
        return f"session.count({format_selector(e.selector)}{within})"
    if isinstance(e, ast.Used):
        return f"session.used({format_selector(e.selector)})"
    if isinstance(e, ast.Len):
        return f"len({format_expr(e.arg, _OPERAND)})"
    if isinstance(e, ast.Has):
        return "has " + ".".join(e.path.parts)
    if isinstance(e, ast.Not):
        return "not " + format_expr(e.operand, _NOT, tail)
    if isinstance(e, (ast.And, ast.Or)):
        word, item_prec = (" and ", _NOT) if isinstance(e, ast.And) else (" or ", _AND)
        last = len(e.items) - 1
        return word.join(format_expr(it, item_prec, tail and i == last) for i, it in enumerate(e.items))
    if isinstance(e, ast.Cmp):
        return f"{format_expr(e.left, _OPERAND)} {e.op} {format_expr(e.right, _OPERAND)}"
    if isinstance(e, ast.Matches):
        return f"{format_expr(e.value, _OPERAND)} matches /{e.pattern}/{e.flags}"
    if isinstance(e, ast.From):
        return f"{format_expr(e.value, _OPERAND)} from {_source(e.source)}"
    if isinstance(e, ast.Quant):
        return f"{e.kind} {e.var.value} in {format_expr(e.collection, _OPERAND)}: {format_expr(e.body)}"
    raise TypeError(f"not an expression: {e!r}")


def _cond_lines(e: ast.Expr, col: int, lead: str, min_prec: int, tail: bool,
                trail: str = "", group: bool = False) -> list[str]:
    """`lead + e + trail` as lines, the first starting at column `col`.

    `group`: parenthesise `e` if it has to be broken (an `and` chain inside an
    `or`, whose grouping the reader could not see otherwise).
    """
    flat = lead + format_expr(e, min_prec, tail) + trail
    if col + len(flat) <= WIDTH:
        return [" " * col + flat]
    if _needs_parens(e, min_prec, tail) or (group and isinstance(e, (ast.And, ast.Or))):
        return _cond_lines(e, col, lead + "(", _OR, True, ")" + trail)
    if isinstance(e, (ast.And, ast.Or)):
        word, item_prec = ("and ", _NOT) if isinstance(e, ast.And) else ("or ", _AND)
        is_or = isinstance(e, ast.Or)
        operand_col = col + len(lead)
        lines: list[str] = []
        last = len(e.items) - 1
        for i, item in enumerate(e.items):
            item_trail = trail if i == last else ""
            item_tail = tail and i == last
            if i == 0:
                lines += _cond_lines(item, col, lead, item_prec, item_tail, item_trail, group=is_or)
            else:
                lines += _cond_lines(item, operand_col, word, item_prec, item_tail, item_trail, group=is_or)
        return lines
    if isinstance(e, ast.Not):
        return _cond_lines(e.operand, col, lead + "not ", _NOT, tail, trail)
    if isinstance(e, ast.Quant):
        head = f"{e.kind} {e.var.value} in {format_expr(e.collection, _OPERAND)}: "
        return _cond_lines(e.body, col, lead + head, _OR, True, trail)
    return [" " * col + flat]


# ---- declarations -------------------------------------------------------------

def _param(p: ast.ParamDecl) -> str:
    text = f"{p.name.value}: {format_type(p.type)}"
    if p.default is not None:
        text += " = " + format_expr(p.default, _ATOM)
    if p.sensitive:
        text += " sensitive"
    return text


def _tool_clauses(t: ast.ToolDecl) -> list[str]:
    clauses = []
    r = t.returns
    if r is not None:
        if r.none:
            clauses.append("returns none")
        else:
            if r.level is None:
                raise ValueError(f"tool `{t.name.value}`: `returns` needs a level or `none`")
            text = f"returns {r.level.value}"
            if r.untrusted:
                text += " untrusted"
            if r.tags:
                text += " tagged " + ", ".join(n.value for n in r.tags)
            clauses.append(text)
    if t.effects:
        clauses.append("effects " + ", ".join(n.value for n in t.effects))
    if t.wraps is not None:
        clauses.append(f"wraps {format_expr(t.wraps.name, _OPERAND)} with {format_expr(t.wraps.args, _OPERAND)}")
    return clauses


def _tool(t: ast.ToolDecl) -> list[str]:
    params = [_param(p) for p in t.params]
    head = f"tool {t.name.value}(" + ", ".join(params) + ")"
    clauses = _tool_clauses(t)
    one_line = " ".join([head, *clauses])
    if len(one_line) <= WIDTH:
        return [one_line]
    if len(head) <= WIDTH or not params:
        lines = [head]
    else:
        # Parameters get a double indent so that they stand apart from the clauses.
        lines = [f"tool {t.name.value}("]
        lines += [INDENT * 2 + p + "," for p in params[:-1]]
        lines.append(INDENT * 2 + params[-1] + ")")
    joined = INDENT + " ".join(clauses)
    if clauses and len(joined) <= WIDTH:
        lines.append(joined)
    else:
        lines += [INDENT + c for c in clauses]
    return lines


def _literal_lines(prefix: str, value: ast.Expr) -> list[str]:
    """`prefix + value`; a long list or set literal gets one item per line."""
    flat = prefix + format_expr(value, _ATOM)
    if len(flat) <= WIDTH or not isinstance(value, (ast.ListLit, ast.SetLit)) or not value.items:
        return [flat]
    open_, close = ("[", "]") if isinstance(value, ast.ListLit) else ("{", "}")
    items = [INDENT + format_expr(i, _ATOM) for i in value.items]
    return [prefix + open_] + [i + "," for i in items[:-1]] + [items[-1], close]


def _wrapped_head(words: str, sel: ast.Selector) -> list[str]:
    """`words SELECTOR`; a selector too long for one line fills double-indented continuation lines."""
    one = f"{words} {format_selector(sel)}"
    if len(one) <= WIDTH or len(sel.items) < 2:
        return [one]
    items = [_sel_item(i) for i in sel.items]
    pieces = [item + "," for item in items[:-1]] + [items[-1]]
    lines: list[str] = []
    current = f"{words} {pieces[0]}"
    for piece in pieces[1:]:
        if len(current) + 1 + len(piece) > WIDTH:
            lines.append(current)
            current = INDENT * 2 + piece
        else:
            current += " " + piece
    lines.append(current)
    return lines


def _rule(r: ast.RuleDecl) -> list[str]:
    words = f"{r.effect} {format_string(r.id)}"
    if r.priority is not None:
        words += f" priority {r.priority}"
    lines = _wrapped_head(words, r.selector)
    if r.condition is not None:
        lines += _cond_lines(r.condition, len(INDENT), "when ", _OR, True)
    args = r.args
    if isinstance(args, ast.ModifyArgs):
        if not args.sets and not args.redacts:
            raise ValueError(f"rule `{r.id}`: modify arguments need `set` or `redact`")
        if args.sets:
            lines.append(INDENT + "set " + ", ".join(
                f"{a.name.value} = {format_expr(a.value, _OPERAND)}" for a in args.sets))
        if args.redacts:
            lines.append(INDENT + "redact " + ", ".join(n.value for n in args.redacts))
    elif isinstance(args, ast.StepUpArgs):
        approvers = ", ".join(format_string(a) for a in args.approvers)
        lines.append(f"{INDENT}approvers [{approvers}] timeout {format_duration(args.timeout.seconds)}")
    elif isinstance(args, ast.DeferArgs):
        lines.append(f"{INDENT}timeout {format_duration(args.timeout.seconds)}")
    elif args is not None:
        raise TypeError(f"not rule arguments: {args!r}")
    if r.because is not None:
        lines.append(INDENT + "because " + format_string(r.because))
    return lines


def _assert(a: ast.AssertDecl) -> list[str]:
    name = f"assert {format_string(a.name)}:"
    body = f"{a.kind} {', '.join(a.decisions)}"
    lines = _wrapped_head(f"{name} {body}", a.selector)
    if len(lines[0]) > WIDTH:
        lines = [name] + [INDENT + line for line in _wrapped_head(body, a.selector)]
    if a.condition is not None:
        lines += _cond_lines(a.condition, len(INDENT), "when ", _OR, True)
    return lines


def format_decl(d: ast.Decl) -> list[str]:
    """One declaration as lines (no trailing newlines)."""
    if isinstance(d, ast.PolicyDecl):
        return [f"policy {format_string(d.name)} version {format_string(d.version)}"]
    if isinstance(d, ast.DefaultDecl):
        return [f"default {d.posture}"]
    if isinstance(d, ast.LabelsDecl):
        return ["labels " + " < ".join(n.value for n in d.names)]
    if isinstance(d, ast.TagsDecl):
        return ["tags " + ", ".join(n.value for n in d.names)]
    if isinstance(d, ast.ToolDecl):
        return _tool(d)
    if isinstance(d, ast.EnvDecl):
        return [f"env {d.name.value}: {format_type(d.type)}"]
    if isinstance(d, ast.ConstDecl):
        return _literal_lines(f"const {d.name.value} = ", d.value)
    if isinstance(d, ast.RuleDecl):
        return _rule(d)
    if isinstance(d, ast.AssertDecl):
        return _assert(d)
    raise TypeError(f"not a declaration: {d!r}")


_GROUP = {ast.PolicyDecl: "header", ast.DefaultDecl: "header", ast.LabelsDecl: "vocabulary",
          ast.TagsDecl: "vocabulary", ast.ToolDecl: "tool", ast.EnvDecl: "data", ast.ConstDecl: "data"}


def _attach_comments(module: ast.Module):
    """(leading comments per declaration, the one trailing comment or None per declaration, comments at the end)."""
    decls = module.decls
    leading: list[list[str]] = [[] for _ in decls]
    inner: list[list[str]] = [[] for _ in decls]
    end: list[str] = []
    if any(d.span is None for d in decls):
        # A module built in code has no lines to attach comments to.
        return leading, [None] * len(decls), [c.text for c in module.comments]
    starts = [d.span.line for d in decls]
    for c in sorted(module.comments, key=lambda c: c.line):
        # The last declaration starting on or before the comment's line holds
        # it if it reaches that line; otherwise the comment leads the next one.
        i = bisect.bisect_right(starts, c.line) - 1
        if i >= 0 and c.line <= decls[i].span.end_line:
            inner[i].append(c.text)
        elif i + 1 < len(decls):
            leading[i + 1].append(c.text)
        else:
            end.append(c.text)
    trailing: list[str | None] = []
    for i in range(len(decls)):
        if len(inner[i]) == 1:
            trailing.append(inner[i][0])
        else:
            # Several comments inside one declaration have no place in its
            # canonical layout; they go before it, in order.
            leading[i] += inner[i]
            trailing.append(None)
    return leading, trailing, end


def _blank_in_source(module: ast.Module, i: int, comment_lines: list[int]) -> bool:
    """Whether the author left a blank line between declaration i-1 and i (`comment_lines` sorted)."""
    prev, cur = module.decls[i - 1].span, module.decls[i].span
    if prev is None or cur is None:
        return False
    between = cur.line - prev.end_line - 1
    comments = bisect.bisect_left(comment_lines, cur.line) - bisect.bisect_right(comment_lines, prev.end_line)
    return between > comments


def format_module(module: ast.Module) -> str:
    """The canonical text of one policy file (empty, or ending in one newline)."""
    leading, trailing, end = _attach_comments(module)
    comment_lines = sorted({c.line for c in module.comments})
    out: list[str] = []
    prev_group: str | None = None
    for i, d in enumerate(module.decls):
        lines = format_decl(d)
        group = _GROUP.get(type(d))
        if i > 0:
            tight = (group is not None and group == prev_group
                     and not leading[i] and not _blank_in_source(module, i, comment_lines))
            if not tight:
                out.append("")
        out += leading[i]
        if trailing[i] is not None:
            lines[0] += "  " + trailing[i]
        out += lines
        prev_group = group
    if end:
        if out:
            out.append("")
        out += end
    return "".join(line + "\n" for line in out)
