"""Parse one policy file into the typed AST.

`parse_module(source)` returns `(Module | None, diagnostics)`. Lark's tree and
tokens never leave this module; a syntax error becomes a located diagnostic
naming what was expected, never a traceback.
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path

import attrs
import lark
from lark import Token, v_args
from lark.visitors import Transformer_NonRecursive
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from aarmc.diagnostics import ERROR, Diagnostic
from aarmc.source import SourceFile, Span
from aarmc.syntax import ast

MAX_INT = 2**63 - 1
# Robustness (found by tests/test_fuzz_grammar.py): later stages walk expressions
# and types recursively, so a file nesting them deeper than this is rejected with
# AARM-E0107 instead of ending in a RecursionError. Long flat `and` / `or` chains
# are not nesting (the AST keeps them flat).
MAX_NESTING = 64
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_STRING_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "/": "/"}


def grammar_text() -> str:
    """The grammar, from the package data (or the checkout's `grammar/` when run from source)."""
    try:
        return resources.files("aarmc").joinpath("grammar/aarmc.lark").read_text("utf-8")
    except (FileNotFoundError, ModuleNotFoundError, NotADirectoryError):
        return (Path(__file__).resolve().parents[2] / "grammar" / "aarmc.lark").read_text("utf-8")


def _lark() -> lark.Lark:
    return _comment_parser()


class _SyntaxProblem(Exception):
    """Raised inside the transformer for a well-formed parse with an invalid token value."""

    def __init__(self, code: str, message: str, span: Span, help: str | None = None):
        super().__init__(message)
        self.diagnostic = Diagnostic(code=code, severity=ERROR, message=message, span=span, help=help)


def _decode_string(tok: Token, file: str) -> str:
    body = tok.value[1:-1]
    out = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            out.append(_STRING_ESCAPES[body[i + 1]])  # the terminal admits only these escapes
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_duration(text: str) -> int:
    """Seconds in a duration literal.

    >>> parse_duration("15m")
    900
    """
    return int(text[:-1]) * DURATION_UNITS[text[-1]]


@v_args(meta=True, inline=True)
class _ToAst(Transformer_NonRecursive):
    """Lark tree → AST. Method names are the grammar's rule names and aliases.

    Non-recursive (robustness fix): `a and b and ...` is a left-deep Lark tree
    as deep as the chain is long, and deep nesting is reported by
    `_check_nesting` on the AST rather than by a RecursionError here.
    """

    def __init__(self, file: str):
        super().__init__()
        self.file = file

    # -- spans
    def _span(self, meta) -> Span | None:
        if getattr(meta, "empty", True):
            return None
        return Span(file=self.file, line=meta.line, col=meta.column,
                    end_line=meta.end_line, end_col=meta.end_column)

    def _tspan(self, tok: Token) -> Span:
        return Span(file=self.file, line=tok.line, col=tok.column,
                    end_line=tok.end_line, end_col=tok.end_column)

    def _name(self, tok: Token) -> ast.Name:
        return ast.Name(value=str(tok), span=self._tspan(tok))

    def _str(self, tok: Token) -> str:
        return _decode_string(tok, self.file)

    def _duration(self, tok: Token) -> ast.Duration:
        # Robustness: more digits than any duration up to a year; also keeps
        # int() away from Python's 4300-digit conversion limit.
        digits = tok.value[:-1].lstrip("0") or "0"
        if len(digits) > 12:
            raise _SyntaxProblem("AARM-E0106", f"duration `{_shown(tok.value)}` is longer than a year", self._tspan(tok))
        seconds = parse_duration(digits + tok.value[-1])
        if seconds <= 0:
            raise _SyntaxProblem("AARM-E0106", f"duration `{tok.value}` must be positive", self._tspan(tok))
        if seconds > 366 * 86400:
            raise _SyntaxProblem("AARM-E0106", f"duration `{tok.value}` is longer than a year", self._tspan(tok))
        return ast.Duration(seconds=seconds, span=self._tspan(tok))

    # -- module
    def start(self, meta, *decls):
        return list(decls)

    def policy_decl(self, meta, name, version):
        return ast.PolicyDecl(name=self._str(name), version=self._str(version), span=self._span(meta))

    def default_decl(self, meta, posture):
        return ast.DefaultDecl(posture=posture, span=self._span(meta))

    def posture_deny(self, meta):
        return "deny"

    def posture_allow(self, meta):
        return "allow"

    def labels_decl(self, meta, *names):
        return ast.LabelsDecl(names=tuple(self._name(n) for n in names), span=self._span(meta))

    def tags_decl(self, meta, *names):
        return ast.TagsDecl(names=tuple(self._name(n) for n in names), span=self._span(meta))

    # -- tools
    def tool_decl(self, meta, name, *rest):
        *params, returns, effects, wraps = rest
        params = tuple(p for p in params if p is not None)
        tool = self._tool_name(name, glob_ok=False)
        return ast.ToolDecl(name=tool, params=params, returns=returns, effects=effects or (),
                            wraps=wraps, span=self._span(meta))

    def _tool_name(self, tok: Token, glob_ok: bool) -> ast.Name:
        if not glob_ok and "*" in tok.value:
            raise _SyntaxProblem("AARM-E0104", f"a declared tool name cannot contain `*`: `{tok.value}`",
                                 self._tspan(tok), help="globs select tools in rules; declare each tool by its full name")
        segments = tok.value.split(".")
        if any(s == "" for s in segments):
            raise _SyntaxProblem("AARM-E0104", f"invalid tool name `{tok.value}`", self._tspan(tok))
        return self._name(tok)

    def param(self, meta, name, type_, default, sensitive):
        return ast.ParamDecl(name=self._name(name), type=type_, default=default,
                             sensitive=sensitive is not None, span=self._span(meta))

    def param_default(self, meta, lit):
        return lit

    def sensitive(self, meta):
        return True

    def type(self, meta, t):
        return t

    def optional_type(self, meta, t):
        return ast.OptType(inner=t, span=self._span(meta))

    def _prim(name):  # noqa: N805 - a method factory
        def method(self, meta):
            return ast.PrimType(name=name, span=self._span(meta))
        return method

    t_str = _prim("str")
    t_int = _prim("int")
    t_decimal = _prim("decimal")
    t_bool = _prim("bool")
    t_email = _prim("email")
    t_url = _prim("url")
    t_path = _prim("path")
    t_json = _prim("json")
    del _prim

    def t_enum(self, meta, *values):
        return ast.EnumType(values=tuple(self._str(v) for v in values), span=self._span(meta))

    def t_list(self, meta, elem):
        return ast.ListType(elem=elem, span=self._span(meta))

    def returns_none(self, meta):
        return ast.Returns(none=True, span=self._span(meta))

    def returns_data(self, meta, level, untrusted, tagged):
        return ast.Returns(none=False, level=self._name(level), untrusted=untrusted is not None,
                           tags=tagged or (), span=self._span(meta))

    def untrusted(self, meta):
        return True

    def tagged(self, meta, *names):
        return tuple(self._name(n) for n in names)

    def effects(self, meta, *names):
        return tuple(self._name(n) for n in names)

    def wraps(self, meta, name, args):
        return ast.Wraps(name=name, args=args, span=self._span(meta))

    def env_decl(self, meta, name, type_):
        return ast.EnvDecl(name=self._name(name), type=type_, span=self._span(meta))

    def const_decl(self, meta, name, value):
        return ast.ConstDecl(name=self._name(name), value=value, span=self._span(meta))

    # -- rules
    def rule_decl(self, meta, effect, rid, priority, selector, when, args, because):
        prio, prio_span = priority if priority is not None else (None, None)
        return ast.RuleDecl(effect=effect, id=self._str(rid), selector=selector, priority=prio,
                            condition=when, args=args, because=because, span=self._span(meta),
                            id_span=self._tspan(rid), priority_span=prio_span)

    def _effect(name):  # noqa: N805
        def method(self, meta):
            return name
        return method

    e_forbid = _effect("forbid")
    e_deny = _effect("deny")
    e_allow = _effect("allow")
    e_modify = _effect("modify")
    e_step_up = _effect("step_up")
    e_defer = _effect("defer")
    d_allow = _effect("allow")
    d_deny = _effect("deny")
    d_modify = _effect("modify")
    d_step_up = _effect("step_up")
    d_defer = _effect("defer")
    a_never = _effect("never")
    a_always = _effect("always")
    del _effect

    def priority(self, meta, tok):
        return self._int(tok), self._tspan(tok)

    def when(self, meta, cond):
        return cond

    def because(self, meta, text):
        return self._str(text)

    def modify_args(self, meta, first, second=None):
        sets, redacts = (), ()
        for part in (first, second):
            if part is None:
                continue
            kind, items = part
            if kind == "set":
                sets = items
            else:
                redacts = items
        return ast.ModifyArgs(sets=sets, redacts=redacts, span=self._span(meta))

    def set_clause(self, meta, *assignments):
        return ("set", tuple(assignments))

    def assignment(self, meta, name, value):
        return ast.Assign(name=self._name(name), value=value, span=self._span(meta))

    def redact_clause(self, meta, *names):
        return ("redact", tuple(self._name(n) for n in names))

    def step_up_args(self, meta, *rest):
        *approvers, timeout = rest
        return ast.StepUpArgs(approvers=tuple(self._str(a) for a in approvers if a is not None),
                              timeout=self._duration(timeout), span=self._span(meta))

    def defer_args(self, meta, timeout):
        return ast.DeferArgs(timeout=self._duration(timeout), span=self._span(meta))

    def selector(self, meta, *items):
        return ast.Selector(items=tuple(items), span=self._span(meta))

    def sel_tool(self, meta, tok):
        name = self._tool_name(tok, glob_ok=True)
        return ast.SelItem(kind="tool", name=name.value, span=name.span)

    def sel_any(self, meta):
        return ast.SelItem(kind="any", span=self._span(meta))

    def sel_effects(self, meta, name):
        return ast.SelItem(kind="effects", name=str(name), span=self._span(meta))

    # -- asserts
    def assert_decl(self, meta, name, kind, decisions, selector, when):
        return ast.AssertDecl(name=self._str(name), kind=kind, decisions=decisions,
                              selector=selector, condition=when, span=self._span(meta))

    def decision_set(self, meta, *words):
        return tuple(words)

    # -- conditions
    def _flatten(self, cls, meta, items):
        flat = []
        for it in items:
            if isinstance(it, cls):
                flat.extend(it.items)
            else:
                flat.append(it)
        return cls(items=tuple(flat), span=self._span(meta))

    def or_(self, meta, left, right):
        return self._flatten(ast.Or, meta, (left, right))

    def and_(self, meta, left, right):
        return self._flatten(ast.And, meta, (left, right))

    def not_(self, meta, operand):
        return ast.Not(operand=operand, span=self._span(meta))

    def _quant(kind):  # noqa: N805
        def method(self, meta, var, collection, body):
            return ast.Quant(kind=kind, var=self._name(var), collection=collection, body=body,
                             span=self._span(meta))
        return method

    q_all = _quant("all")
    q_any = _quant("any")
    del _quant

    def _cmp(op):  # noqa: N805
        def method(self, meta, left, right):
            return ast.Cmp(op=op, left=left, right=right, span=self._span(meta))
        return method

    eq = _cmp("==")
    ne = _cmp("!=")
    lt = _cmp("<")
    le = _cmp("<=")
    gt = _cmp(">")
    ge = _cmp(">=")
    in_ = _cmp("in")
    not_in = _cmp("not in")
    startswith = _cmp("startswith")
    endswith = _cmp("endswith")
    contains = _cmp("contains")
    del _cmp

    def matches(self, meta, value, regex):
        text = regex.value
        flags = "i" if text.endswith("i") else ""
        pattern = text[1:-2] if flags else text[1:-1]
        return ast.Matches(value=value, pattern=pattern, flags=flags, span=self._span(meta),
                           pattern_span=self._tspan(regex))

    def from_(self, meta, value, source):
        return ast.From(value=value, source=source, span=self._span(meta))

    def src_user(self, meta):
        return ast.Source(kind="user", span=self._span(meta))

    def src_untrusted(self, meta):
        return ast.Source(kind="untrusted", span=self._span(meta))

    def src_item(self, meta, item):
        return ast.Source(kind="tools", selector=ast.Selector(items=(item,), span=item.span), span=self._span(meta))

    def src_items(self, meta, selector):
        return ast.Source(kind="tools", selector=selector, span=self._span(meta))

    def has(self, meta, path):
        return ast.Has(path=path, span=self._span(meta))

    def len_(self, meta, arg):
        return ast.Len(arg=arg, span=self._span(meta))

    def session_path(self, meta, *names):
        return ast.SessionRef(parts=tuple(str(n) for n in names), span=None)

    def count(self, meta, selector, within):
        return ast.Count(selector=selector, within=within, span=None)

    def used(self, meta, selector):
        return ast.Used(selector=selector, span=None)

    def session_(self, meta, tail):
        return attrs.evolve(tail, span=self._span(meta))

    def within(self, meta, tok):
        return self._duration(tok)

    def path(self, meta, *names):
        return ast.PathRef(parts=tuple(str(n) for n in names), span=self._span(meta))

    # -- literals
    def string(self, meta, tok):
        return ast.StrLit(value=self._str(tok), span=self._span(meta))

    def _int(self, tok: Token) -> int:
        # Robustness: a 64-bit integer has at most 19 digits; checking first keeps
        # int() away from Python's 4300-digit conversion limit (a ValueError).
        sign = "-" if tok.value.startswith("-") else ""
        digits = tok.value.lstrip("-").lstrip("0") or "0"
        if len(digits) > 19:
            raise _SyntaxProblem("AARM-E0105", f"integer `{_shown(tok.value)}` is out of range", self._tspan(tok),
                                 help="integers are 64-bit signed")
        value = int(sign + digits)
        if abs(value) > MAX_INT:
            raise _SyntaxProblem("AARM-E0105", f"integer `{tok.value}` is out of range", self._tspan(tok),
                                 help="integers are 64-bit signed")
        return value

    def int_(self, meta, tok):
        return ast.IntLit(value=self._int(tok), span=self._span(meta))

    def decimal_(self, meta, tok):
        try:
            value = Decimal(tok.value)
        except InvalidOperation:  # pragma: no cover - the terminal admits only digits
            raise _SyntaxProblem("AARM-E0105", f"invalid decimal `{tok.value}`", self._tspan(tok))
        return ast.DecLit(value=value, span=self._span(meta))

    def true(self, meta):
        return ast.BoolLit(value=True, span=self._span(meta))

    def false(self, meta):
        return ast.BoolLit(value=False, span=self._span(meta))

    def list_lit(self, meta, *items):
        return ast.ListLit(items=tuple(i for i in items if i is not None), span=self._span(meta))

    def set_lit(self, meta, *items):
        return ast.SetLit(items=tuple(i for i in items if i is not None), span=self._span(meta))


# ---- errors -------------------------------------------------------------------

_TERMINAL_WORDS = {
    "STRING": "a string", "NAME": "a name", "TOOL": "a tool name (`service.operation`)",
    "INT": "an integer", "SIGNED_INT": "an integer", "DECIMAL": "a decimal",
    "DURATION": "a duration (`30s`, `15m`, `1h`, `2d`)", "REGEX": "a regular expression `/.../`",
}


@functools.lru_cache(maxsize=None)
def _terminal_text(name: str) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    if name == "$END":
        return "end of input"
    try:
        term = _lark().get_terminal(name)
    except KeyError:
        return name
    if term.pattern.type == "str":
        return f"`{term.pattern.value}`"
    return name


def _expected(names) -> str:
    words = sorted({_terminal_text(n) for n in names})
    if not words:
        return ""
    if len(words) > 8:
        return "expected " + ", ".join(words[:8]) + ", ..."
    return "expected " + ", ".join(words)


def _shown(value: str) -> str:
    value = value.replace("\n", "\\n")
    return value if len(value) <= 40 else value[:37] + "..."


def _end_position(text: str) -> tuple[int, int]:
    """Line and column just after the last line's text.

    Robustness fix: lines are counted at `\n` only, as Lark counts them;
    `str.splitlines` also splits at `\r`, form feeds and U+2028, which put the
    location past the end of such a file.
    """
    lines = text.split("\n")
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
    return len(lines), len(lines[-1]) + 1


def _error_to_diagnostic(err: UnexpectedInput, source: SourceFile) -> Diagnostic:
    if isinstance(err, UnexpectedToken) and err.token.type == "$END":
        line, col = _end_position(source.text)
        span = Span(file=source.name, line=line, col=col, end_line=line, end_col=col + 1)
        return Diagnostic(code="AARM-E0102", severity=ERROR, message="unexpected end of input",
                          span=span, help=_expected(err.accepts or err.expected) or None)
    if isinstance(err, UnexpectedEOF):
        line, col = _end_position(source.text)
        span = Span(file=source.name, line=line, col=col, end_line=line, end_col=col + 1)
        return Diagnostic(code="AARM-E0102", severity=ERROR, message="unexpected end of input",
                          span=span, help=_expected(err.expected) or None)
    if isinstance(err, UnexpectedToken):
        tok = err.token
        span = Span(file=source.name, line=tok.line, col=tok.column,
                    end_line=tok.end_line or tok.line, end_col=tok.end_column or tok.column + 1)
        accepts = err.accepts or err.expected
        help_text = _expected(accepts) or None
        return Diagnostic(code="AARM-E0101", severity=ERROR,
                          message=f"unexpected `{_shown(str(tok))}`", span=span, help=help_text)
    if isinstance(err, UnexpectedCharacters):
        line, col = err.line, err.column
        ch = source.text[err.pos_in_stream] if 0 <= err.pos_in_stream < len(source.text) else ""
        span = Span(file=source.name, line=line, col=col, end_line=line, end_col=col + 1)
        if ch == '"':
            return Diagnostic(code="AARM-E0103", severity=ERROR, message="unterminated or invalid string",
                              span=span, help='strings are on one line; escapes are \\" \\\\ \\n \\t \\/')
        if ch == "/":
            return Diagnostic(code="AARM-E0103", severity=ERROR, message="unterminated regular expression",
                              span=span, help="write `/pattern/` or `/pattern/i` on one line")
        allowed = err.allowed or set()
        return Diagnostic(code="AARM-E0103", severity=ERROR, message=f"unexpected character `{_shown(ch)}`",
                          span=span, help=_expected(allowed) or None)
    span = None
    return Diagnostic(code="AARM-E0101", severity=ERROR, message="syntax error", span=span)


def parse_module(source: SourceFile) -> tuple[ast.Module | None, list[Diagnostic]]:
    """Parse one file. On a syntax error: `(None, [diagnostic])` (the first error only).

    >>> m, diags = parse_module(SourceFile(name="p.aarm", text='policy "p" version "1"\\ndefault deny'))
    >>> m.decls[1].posture, diags
    ('deny', [])
    """
    comments: list[ast.Comment] = []

    def keep_comment(tok: Token) -> None:
        comments.append(ast.Comment(line=tok.line, text=tok.value.rstrip()))

    text = source.text
    bad = _first_unsupported_char(text)
    if bad is not None:
        line = text.count("\n", 0, bad) + 1
        col = bad - (text.rfind("\n", 0, bad) + 1) + 1
        span = Span(file=source.name, line=line, col=col, end_line=line, end_col=col + 1)
        return None, [Diagnostic(code="AARM-E0103", severity=ERROR,
                                 message=f"unsupported character U+{ord(text[bad]):04X}", span=span,
                                 help="policy files are UTF-8 text without control characters")]
    try:
        tree = _parse_with_comments(text, keep_comment)
    except UnexpectedInput as err:
        return None, [_error_to_diagnostic(err, source)]
    try:
        decls = _ToAst(source.name).transform(tree)
    except VisitError as err:
        if isinstance(err.orig_exc, _SyntaxProblem):
            return None, [err.orig_exc.diagnostic]
        raise
    too_deep = _check_nesting(decls)
    if too_deep is not None:
        return None, [too_deep]
    return ast.Module(file=source.name, decls=tuple(decls), comments=tuple(comments)), []


_NESTING_NODES = (*ast.Expr.__args__, *ast.TypeExpr.__args__)


def _check_nesting(decls) -> Diagnostic | None:
    """AARM-E0107 at the first expression or type nested more than MAX_NESTING deep (robustness).

    Iterative on purpose: the point is to never recurse as deep as the input.
    """
    stack = [(d, 0, d.span) for d in reversed(decls)]
    while stack:
        node, depth, span = stack.pop()
        span = getattr(node, "span", None) or span
        if isinstance(node, _NESTING_NODES):
            depth += 1
            if depth > MAX_NESTING:
                kind = "type" if isinstance(node, ast.TypeExpr.__args__) else "expression"
                return Diagnostic(code="AARM-E0107", severity=ERROR, message=f"{kind} nested too deeply",
                                  span=span, help=f"at most {MAX_NESTING} levels of nesting are supported")
        children = []
        for field in attrs.fields(type(node)):
            value = getattr(node, field.name)
            for child in (value if isinstance(value, tuple) else (value,)):
                if attrs.has(type(child)) and not isinstance(child, Span):
                    children.append((child, depth, span))
        stack.extend(reversed(children))
    return None


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def _first_unsupported_char(text: str) -> int | None:
    m = _CONTROL.search(text)
    return m.start() if m else None


def _parse_with_comments(text: str, on_comment):
    parser = _comment_parser()
    _comment_sink.append(on_comment)
    try:
        return parser.parse(text)
    finally:
        _comment_sink.pop()


_comment_sink: list = []


@functools.lru_cache(maxsize=1)
def _comment_parser() -> lark.Lark:
    return lark.Lark(
        grammar_text(),
        parser="lalr",
        lexer="contextual",
        strict=True,
        propagate_positions=True,
        maybe_placeholders=True,
        lexer_callbacks={"COMMENT": lambda tok: _comment_sink[-1](tok) if _comment_sink else None},
    )
