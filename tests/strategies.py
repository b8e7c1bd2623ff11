"""Shared hypothesis strategies for aarmc (one module; every new construct extends it).

The AST strategies build random `ast.Module`s that the grammar can spell: the
printer must turn each into text that parses back to an equal module. They
produce what the parser produces, no more: `and` / `or` chains are flat and
have at least two operands, optional types are not optional twice, list and
set literals hold literals, modify arguments are never empty.

Identifiers: the grammar's keywords are rules, not terminals, and the
contextual lexer reads a keyword as a NAME wherever the parser does not expect
that keyword. So `path`, `user` or even `not` may name a parameter, a label or
an effect, and the strategies use them there on purpose. A NAME is reserved only
in the parser states where a keyword competes with it (the start of an
expression, after `session.`, after `returns`); `NAME_COMPETING_KEYWORDS` is
that set, computed from the grammar's LALR table, and it is kept out of the
positions that begin such a state.

Others may append sections at the end of this file; keep each section's
helpers to itself.
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal

import lark
from hypothesis import strategies as st

from aarmc.syntax import ast
from aarmc.syntax.parser import MAX_INT, grammar_text

# ---- vocabulary from the grammar ------------------------------------------------


@functools.lru_cache(maxsize=1)
def grammar_parser() -> lark.Lark:
    """A plain LALR parser of the project grammar (for analysis and `from_lark`)."""
    return lark.Lark(grammar_text(), parser="lalr", lexer="contextual")


def _keyword_terminals() -> dict[str, str]:
    return {t.name: t.pattern.value for t in grammar_parser().terminals
            if t.pattern.type == "str" and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", t.pattern.value)}


#: Every word the grammar spells as a string literal.
KEYWORDS: frozenset[str] = frozenset(re.findall(r'"([A-Za-z_][A-Za-z0-9_]*)"', grammar_text()))


def _competing_keywords() -> frozenset[str]:
    words = _keyword_terminals()
    table = grammar_parser().parser.parser._parse_table  # lark's LALR table: state -> {terminal: action}
    out: set[str] = set()
    for actions in table.states.values():
        if "NAME" in actions:
            out |= {words[t] for t in actions if t in words}
    return frozenset(out)


#: Keywords that the parser accepts in some state where it also accepts a NAME.
NAME_COMPETING_KEYWORDS: frozenset[str] = _competing_keywords()

# Characters the parser rejects anywhere in a file.
CONTROL_CHARS = "".join(chr(c) for c in [*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F])


def choice(*strategies: st.SearchStrategy) -> st.SearchStrategy:
    """Draw from one of `strategies`, each equally likely.

    `st.one_of` favours its first branches when generating, which starves the
    later node kinds; a uniform choice keeps every kind in play.
    """
    # Indices, not the strategies themselves: a strategy's repr (which hypothesis
    # builds for labels and reports) would nest every branch's repr.
    return st.sampled_from(range(len(strategies))).flatmap(lambda i: strategies[i])


# ---- identifiers ----------------------------------------------------------------

_plain_ident = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,7}", fullmatch=True)

#: A NAME where no keyword competes (declared names, parameters, path tails, quantifier variables).
names = st.one_of(_plain_ident, st.sampled_from(sorted(KEYWORDS)))

#: A NAME that starts a reference (a path in an expression, a label after `returns`, `session.x`).
ref_names = names.filter(lambda n: n not in NAME_COMPETING_KEYWORDS)


def _name_node(value: str) -> ast.Name:
    return ast.Name(value=value)


_tool_segment = st.one_of(st.from_regex(r"[A-Za-z0-9_]{1,6}", fullmatch=True), st.sampled_from(sorted(KEYWORDS)))
_glob_segment = st.one_of(_tool_segment, st.from_regex(r"[A-Za-z0-9_]{0,3}\*[A-Za-z0-9_*]{0,3}", fullmatch=True))


def _dotted(first, rest) -> st.SearchStrategy[str]:
    return st.tuples(first, st.lists(rest, min_size=1, max_size=2)).map(lambda t: ".".join([t[0], *t[1]]))


#: A declared tool name (`service.operation`, no `*`).
tool_names = _dotted(names, _tool_segment)
#: A tool name or glob in a selector.
tool_globs = _dotted(names, _glob_segment)

# ---- literals -------------------------------------------------------------------

_string_chars = st.one_of(
    st.sampled_from(list('"\\\n\t/# \r\x0c')),
    st.characters(blacklist_characters=CONTROL_CHARS, blacklist_categories=("Cs",)),
)
#: Any string a policy can spell, escapes included.
strings = st.text(alphabet=_string_chars, max_size=10)

ints = st.one_of(st.integers(min_value=-MAX_INT, max_value=MAX_INT), st.integers(min_value=-20, max_value=200))
decimals = st.tuples(st.integers(min_value=-10**12, max_value=10**12), st.integers(min_value=0, max_value=8)).map(
    lambda t: Decimal(t[0]).scaleb(-t[1]))
durations = st.one_of(
    st.sampled_from([1, 30, 59, 60, 90, 900, 3600, 5400, 86400, 366 * 86400]),
    st.integers(min_value=1, max_value=366 * 86400),
).map(lambda s: ast.Duration(seconds=s))

scalar_literals = st.one_of(
    strings.map(lambda v: ast.StrLit(value=v)),
    ints.map(lambda v: ast.IntLit(value=v)),
    decimals.map(lambda v: ast.DecLit(value=v)),
    st.booleans().map(lambda v: ast.BoolLit(value=v)),
)


def _collections(inner):
    items = st.lists(inner, max_size=3).map(tuple)
    return st.one_of(items.map(lambda i: ast.ListLit(items=i)), items.map(lambda i: ast.SetLit(items=i)))


#: A literal: scalars, and list and set literals of literals (nested).
literals = st.recursive(scalar_literals, _collections, max_leaves=6)

# ---- types ----------------------------------------------------------------------


def _maybe_optional(t):
    return st.one_of(t, t.map(lambda x: ast.OptType(inner=x)))


_base_types = st.one_of(
    st.sampled_from(ast.PRIM_TYPES).map(lambda n: ast.PrimType(name=n)),
    st.lists(strings, min_size=1, max_size=3).map(lambda vs: ast.EnumType(values=tuple(vs))),
)
#: Every type form: primitives, enums, lists of anything, optional (once) at any level.
type_exprs = _maybe_optional(st.recursive(
    _base_types, lambda inner: _maybe_optional(inner).map(lambda t: ast.ListType(elem=t)), max_leaves=3))

# ---- selectors and sources --------------------------------------------------------

sel_items = st.one_of(
    tool_globs.map(lambda n: ast.SelItem(kind="tool", name=n)),
    st.just(ast.SelItem(kind="any")),
    names.map(lambda n: ast.SelItem(kind="effects", name=n)),
)
selectors = st.lists(sel_items, min_size=1, max_size=3).map(lambda i: ast.Selector(items=tuple(i)))
sources = st.one_of(
    st.sampled_from([ast.Source(kind="user"), ast.Source(kind="untrusted")]),
    selectors.map(lambda s: ast.Source(kind="tools", selector=s)),
)

# ---- regular expressions (the documented subset) ---------------------------------

_regex_atoms = st.one_of(
    st.from_regex(r"[a-z0-9 _-]{1,3}", fullmatch=True),
    st.sampled_from([r"\d", r"\w", r"\s", r"\.", r"\/", r"\\", r"\(", r"\)", r"\-", r"\*", r"\$", ".", "[a-z]",
                     "[^0-9]", "[A-Fa-f0-9_]", "^", "$"]),
)


def _regex_compound(inner):
    return st.one_of(
        st.tuples(inner, st.sampled_from(["*", "+", "?", "{2}", "{1,3}"])).map("".join),
        st.lists(inner, min_size=2, max_size=3).map("".join),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: "(" + "|".join(xs) + ")"),
        inner.map(lambda x: f"(?:{x})"),
    )


#: `(pattern, flags)` in the regex subset of LANGUAGE.md §4, as written between slashes.
regexes = st.tuples(st.recursive(_regex_atoms, _regex_compound, max_leaves=5), st.sampled_from(["", "i"]))

# ---- expressions ------------------------------------------------------------------


def _flat(cls, items):
    out = []
    for it in items:
        out.extend(it.items if isinstance(it, cls) else (it,))
    return cls(items=tuple(out))


path_refs = st.tuples(ref_names, st.lists(names, max_size=2)).map(lambda t: ast.PathRef(parts=(t[0], *t[1])))
_has_paths = st.tuples(names, st.lists(names, max_size=2)).map(lambda t: ast.PathRef(parts=(t[0], *t[1])))

_leaf_exprs = choice(
    literals,
    path_refs,
    st.tuples(ref_names, st.lists(names, max_size=1)).map(lambda t: ast.SessionRef(parts=(t[0], *t[1]))),
    st.builds(lambda s, w: ast.Count(selector=s, within=w), selectors, st.none() | durations),
    selectors.map(lambda s: ast.Used(selector=s)),
    _has_paths.map(lambda p: ast.Has(path=p)),
)


def _compound_exprs(inner):
    return choice(
        inner.map(lambda e: ast.Len(arg=e)),
        inner.map(lambda e: ast.Not(operand=e)),
        # `and` / `or` chains twice: their operands are where parentheses matter most.
        *[st.lists(inner, min_size=2, max_size=4).map(lambda xs: _flat(ast.And, xs)),
          st.lists(inner, min_size=2, max_size=4).map(lambda xs: _flat(ast.Or, xs))] * 2,
        st.builds(lambda op, l, r: ast.Cmp(op=op, left=l, right=r), st.sampled_from(ast.CMP_OPS), inner, inner),
        st.builds(lambda v, rx: ast.Matches(value=v, pattern=rx[0], flags=rx[1]), inner, regexes),
        st.builds(lambda v, s: ast.From(value=v, source=s), inner, sources),
        st.builds(lambda k, v, c, b: ast.Quant(kind=k, var=ast.Name(value=v), collection=c, body=b),
                  st.sampled_from(["all", "any"]), names, inner, inner),
    )


def _exprs_to_depth(depth: int) -> st.SearchStrategy[ast.Expr]:
    # Explicit depth rather than st.recursive: hypothesis keeps recursive
    # strategies small, and the interesting cases (a quantifier that is not the
    # last operand, an `or` under an `and` under a `not`) need a few levels.
    if depth == 0:
        return _leaf_exprs
    compound = _compound_exprs(_exprs_to_depth(depth - 1))
    return choice(_leaf_exprs, compound, compound)


#: Every expression form, nested (quantifiers inside quantifiers, chains inside comparisons, ...).
exprs = _exprs_to_depth(3)

# ---- declarations -------------------------------------------------------------------

policy_decls = st.builds(lambda n, v: ast.PolicyDecl(name=n, version=v), strings, strings)
default_decls = st.sampled_from(["allow", "deny"]).map(lambda p: ast.DefaultDecl(posture=p))
_name_tuples = st.lists(names.map(_name_node), min_size=1, max_size=4).map(tuple)
labels_decls = _name_tuples.map(lambda ns: ast.LabelsDecl(names=ns))
tags_decls = _name_tuples.map(lambda ns: ast.TagsDecl(names=ns))

param_decls = st.builds(
    lambda n, t, d, s: ast.ParamDecl(name=ast.Name(value=n), type=t, default=d, sensitive=s),
    names, type_exprs, st.none() | literals, st.booleans())
returns_clauses = st.one_of(
    st.just(ast.Returns(none=True)),
    st.builds(lambda lvl, u, tags: ast.Returns(none=False, level=ast.Name(value=lvl), untrusted=u, tags=tags),
              ref_names, st.booleans(), st.lists(names.map(_name_node), max_size=2).map(tuple)),
)
tool_decls = st.builds(
    lambda n, ps, r, effs, w: ast.ToolDecl(name=ast.Name(value=n), params=tuple(ps), returns=r,
                                           effects=effs, wraps=w),
    tool_names,
    st.lists(param_decls, max_size=3),
    st.none() | returns_clauses,
    st.lists(names.map(_name_node), max_size=2).map(tuple),
    st.none() | st.builds(lambda a, b: ast.Wraps(name=a, args=b), exprs, exprs),
)
env_decls = st.builds(lambda n, t: ast.EnvDecl(name=ast.Name(value=n), type=t), names, type_exprs)
const_decls = st.builds(lambda n, v: ast.ConstDecl(name=ast.Name(value=n), value=v), names, literals)

_assigns = st.builds(lambda n, v: ast.Assign(name=ast.Name(value=n), value=v), names, exprs)
modify_args = st.builds(
    lambda sets, redacts: ast.ModifyArgs(sets=tuple(sets), redacts=tuple(redacts)),
    st.lists(_assigns, max_size=2), st.lists(names.map(_name_node), max_size=2),
).filter(lambda a: a.sets or a.redacts)
step_up_args = st.builds(lambda ap, t: ast.StepUpArgs(approvers=tuple(ap), timeout=t),
                         st.lists(strings, max_size=2), durations)
defer_args = durations.map(lambda t: ast.DeferArgs(timeout=t))
# The grammar lets any effect take any arguments (the checker rejects mismatches).
rule_args = st.one_of(st.none(), modify_args, step_up_args, defer_args)

rule_decls = st.builds(
    lambda eff, rid, sel, prio, cond, args, because: ast.RuleDecl(
        effect=eff, id=rid, selector=sel, priority=prio, condition=cond, args=args, because=because),
    st.sampled_from(ast.EFFECTS), strings, selectors, st.none() | st.integers(min_value=0, max_value=MAX_INT),
    st.one_of(st.none(), exprs, exprs), rule_args, st.none() | strings,
)
assert_decls = st.builds(
    lambda n, k, ds, sel, cond: ast.AssertDecl(name=n, kind=k, decisions=tuple(ds), selector=sel, condition=cond),
    strings, st.sampled_from(["never", "always"]), st.lists(st.sampled_from(ast.DECISIONS), min_size=1, max_size=3),
    selectors, st.none() | exprs,
)

decls = choice(policy_decls, default_decls, labels_decls, tags_decls, tool_decls, env_decls,
                  const_decls, rule_decls, assert_decls)


# Rules and asserts carry the expressions, so they are drawn more often.
_module_decls = choice(decls, rule_decls, rule_decls, assert_decls)


def modules(max_decls: int = 6) -> st.SearchStrategy[ast.Module]:
    """A module of random declarations (no spans, no comments), as `parse_module` could return it."""
    return st.lists(_module_decls, max_size=max_decls).map(lambda ds: ast.Module(file="gen.aarm", decls=tuple(ds)))
