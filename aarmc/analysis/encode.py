"""The IR of one tool as Z3 formulas: typed params, context, and Kleene conditions.

Everything is per tool: an action names one tool, and only the rules that
select it decide it. `ToolEncoding` first *plans* (one walk over every
condition, modify assignment and assert of the tool: which string leaves are
compared with what, how long lists must be, which session facts are read),
then creates the variables, then encodes conditions on demand (each rule's
condition once, cached).

Kleene logic (LANGUAGE.md §5.3) is encoded exactly: a condition is a triple of
Z3 booleans `(t, f, x)` — true, false, failed — and *unknown* is none of them.
`x` (an evaluation failure, DENY `evaluation-error`) only arises from `len` of
a json value that is neither a string, an array nor an object; elsewhere it is
the constant false and disappears. Reading an absent context field makes a
term unknown, and `and` / `or` / `not` / quantifiers combine the triples as the
reference interpreter does: false absorbs everything in `and`, true in `or`,
then failure beats unknown.

Lists are bounded sequences of at most K elements. For the fragment where a
list is only quantified over, tested for membership and compared by length
with constants, a K that preserves every condition's value exists (keep one
element per quantifier for each of the values false / unknown / failed, resp.
true / unknown / failed, one per membership test, and pad to the largest
length constant + 1 with copies) and is used; `ListBound.exact` records
whether that argument applied, otherwise results hold for lists up to K.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs
import z3
from aarm_runtime import values
from aarm_runtime.values import EnumT, ListT

from aarmc.analysis import strings
from aarmc.analysis.regex_z3 import matches as re_matches
from aarmc.analysis.session_model import Features, SessionModel
from aarmc.analysis.strings import StringPlan, kind_regex, literal_leaves, scalar_shape
from aarmc.analysis.symbolic import (
    FALSE, TRUE, AnalysisBug, BoolV, EmailV, JsonDomain, JsonV, ListV, Lit, NumV, PathV, StrV, SVal, TagsV,
    UrlV, and_, implies, not_, num_cmp, or_,
)
from aarmc.semantics import ir
from aarmc.semantics import types as ty

LIST_CAP = 6
# 10^4300 as text: Python refuses to print ints that long.
NUMBER_LIMIT_TEXT = "1" + "0" * values.MAX_NUMBER_DIGITS


class Unsupported(Exception):
    """A construct this encoding does not model exactly; checks on the tool report `unknown`."""


@attrs.frozen
class Tri:
    """A Kleene truth value: true, false, failed; unknown is none of the three."""
    t: z3.BoolRef
    f: z3.BoolRef
    x: z3.BoolRef = FALSE

    @property
    def u(self) -> z3.BoolRef:
        return and_(not_(self.t), not_(self.f), not_(self.x))

    def negate(self) -> "Tri":
        return Tri(self.f, self.t, self.x)


@attrs.frozen
class V:
    """A value: `ok` (known and evaluated), `fail` (failed); unknown is neither."""
    v: Any  # SVal | Lit
    ok: z3.BoolRef = TRUE
    fail: z3.BoolRef = FALSE


def kand(items: Sequence[Tri]) -> Tri:
    f = or_(*(i.f for i in items))
    return Tri(and_(*(i.t for i in items)), f, and_(not_(f), or_(*(i.x for i in items))))


def kor(items: Sequence[Tri]) -> Tri:
    t = or_(*(i.t for i in items))
    return Tri(t, and_(*(i.f for i in items)), and_(not_(t), or_(*(i.x for i in items))))


@attrs.define
class ListBound:
    k: int
    exact: bool
    why: str = ""


# ---- planning -------------------------------------------------------------------------

@attrs.define
class _ListUse:
    quantifiers: int = 0
    members: int = 0
    len_const: int = -1
    eq_len: int = 0
    unbounded: str = ""


class _Planner:
    """One walk over everything the tool's decision reads."""

    def __init__(self, policies: Sequence[ir.Policy], tool: ir.Tool) -> None:
        self.policies = policies
        self.tool = tool
        self.plan = StringPlan()
        self.lists: dict[tuple, _ListUse] = {}
        self.json_literals: list[Any] = []
        self.json_leaves: set[tuple] = set()
        self.features = Features()
        self.from_groups: dict[str, list[tuple]] = {}
        self.reads: set[tuple] = set()
        self.user_from = False
        self.policy: ir.Policy = policies[0]
        self.depth = 0

    # -- places

    def _register(self, key: tuple, t: Any) -> None:
        if isinstance(t, ListT):
            self.lists.setdefault(key, _ListUse())
            self._register(key + ("[]",), t.elem)
            return
        if t == ty.JSON:
            self.json_leaves.add(key)
            return
        shape = scalar_shape(t)
        if shape is None:
            return
        for f, kind in shape.items():
            self.plan.leaf(key + (f,) if f else key, kind)

    def desc(self, e: ir.Expr, vars: dict) -> Any:
        if isinstance(e, ir.Lit):
            return ("lits", [e.value], ty.value_type(e.value) if e.value is not None else None)
        if isinstance(e, ir.Param):
            spec = self.tool.param(e.name)
            self._register(("p", e.name), spec.type)
            return ("place", ("p", e.name), spec.type)
        if isinstance(e, ir.Var):
            return vars[e.name]
        if isinstance(e, ir.Field):
            b = self.desc(e.base, vars)
            if b is None:
                return None
            if b[0] == "lits":
                return ("lits", [getattr(v, e.name) for v in b[1]], ty.STR)
            shape = scalar_shape(b[2])
            kind = shape[e.name]
            key = b[1] + (e.name,)
            self.plan.leaf(key, kind)
            return ("field", key, kind)
        if isinstance(e, ir.Ctx):
            if e.source == "session":
                if e.key == "tags":
                    return ("lits", list(self.policy.tags), "tags")
                return None
            t = ty.ctx_type(e.source, e.key, self.policy)
            key = (e.source, e.key)
            self.reads.add(key)
            self._register(key, t)
            return ("place", key, t)
        return None

    def leaves(self, d: Any) -> dict[str, tuple]:
        """Leaf keys of a string-like place, keyed like `scalar_shape`."""
        if d[0] == "field":
            return {"": d[1]}
        shape = scalar_shape(d[2])
        if shape is None:
            return {}
        return {f: (d[1] + (f,) if f else d[1]) for f in shape}

    def join(self, a: Any, b: Any) -> None:
        if a is None or b is None or a[0] == "lits" or b[0] == "lits":
            return
        ta = a[2] if a[0] == "place" else ty.STR
        tb = b[2] if b[0] == "place" else ty.STR
        if isinstance(ta, ListT) and isinstance(tb, ListT):
            self.join(("place", a[1] + ("[]",), ta.elem), ("place", b[1] + ("[]",), tb.elem))
            use_a, use_b = self.lists[a[1]], self.lists[b[1]]
            use_a.unbounded = use_b.unbounded = "a list is compared with or copied from another list"
            return
        if ta == ty.JSON or tb == ty.JSON:
            return
        la, lb = self.leaves(a), self.leaves(b)
        if a[0] == "field" or b[0] == "field":
            for x in la.values():
                for y in lb.values():
                    self.plan.join(x, y)
            return
        for f in la:
            if f in lb:
                self.plan.join(la[f], lb[f])

    def add_literals(self, d: Any, lits: list) -> None:
        if d is None or d[0] == "lits":
            return
        t = d[2] if d[0] == "place" else ty.STR
        if isinstance(t, ListT):
            use = self.lists[d[1]]
            for lit in lits:
                if isinstance(lit, (tuple, frozenset)):
                    use.eq_len = max(use.eq_len, len(lit))
                    self.add_literals(("place", d[1] + ("[]",), t.elem), list(lit))
            return
        if t == ty.JSON:
            self.json_literals.extend(v for v in lits if not isinstance(v, frozenset))
            return
        lv = self.leaves(d)
        for lit in lits:
            parts = literal_leaves(lit)
            if parts is None:
                continue
            if d[0] == "field":
                for key in lv.values():
                    self.plan.literal(key, parts.get("", next(iter(parts.values()))))
                continue
            for f, key in lv.items():
                if f in parts:
                    self.plan.literal(key, parts[f])

    def theory(self, d: Any) -> None:
        if d is None or d[0] == "lits":
            return
        for key in self.leaves(d).values():
            self.plan.theory(key)

    # -- the walk

    def walk(self, e: ir.Expr | None, vars: dict, weight: int = 1) -> None:
        if e is None:
            return
        if isinstance(e, (ir.Not,)):
            self.walk(e.operand, vars, weight)
        elif isinstance(e, (ir.And, ir.Or)):
            for i in e.items:
                self.walk(i, vars, weight)
        elif isinstance(e, ir.Cmp):
            self._cmp(e, vars, weight)
        elif isinstance(e, ir.Match):
            d = self.desc(e.value, vars)
            if d is not None and d[0] != "lits":
                for leaf in self.leaves(d).values():
                    self.plan.atom(leaf, ("re", e.pattern, e.flags))
        elif isinstance(e, ir.From):
            self._from(e, vars)
        elif isinstance(e, ir.Quant):
            self._quant(e, vars, weight)
        elif isinstance(e, ir.Has):
            if isinstance(e.target, ir.Ctx) and e.target.source != "session":
                self.reads.add((e.target.source, e.target.key))
        elif isinstance(e, ir.Count):
            self.features.selectors.add(e.tools)
            if e.within_s is not None:
                self.features.windows.setdefault(e.tools, set()).add(e.within_s)
        elif isinstance(e, ir.Used):
            self.features.selectors.add(e.tools)
        elif isinstance(e, ir.Len):
            self._operand(e, vars)
        else:
            self._operand(e, vars)

    def _operand(self, e: ir.Expr, vars: dict) -> Any:
        """Walk a value expression; returns its description."""
        if isinstance(e, ir.Len):
            d = self._operand(e.arg, vars)
            if d is not None and d[0] in ("place", "field") and self._is_string(d):
                # Compared with constants it would have been handled in _cmp.
                for leaf in self.leaves(d).values():
                    self.plan.not_unary(leaf)
            if isinstance(e.arg, ir.Ctx) and e.arg.source == "session" and e.arg.key == "tags":
                self.features.all_tags = True
            return None
        if isinstance(e, ir.Count):
            self.walk(e, vars)
            return None
        if isinstance(e, ir.Ctx) and e.source == "session":
            if e.key == "level":
                self.features.level = True
            elif e.key == "actions":
                self.features.actions = True
            elif e.key == "tags":
                self.features.all_tags = True
            return self.desc(e, vars)
        if isinstance(e, (ir.Not, ir.And, ir.Or, ir.Cmp, ir.Match, ir.From, ir.Quant, ir.Has, ir.Used)):
            self.walk(e, vars)
            return None
        return self.desc(e, vars)

    def _is_string(self, d: Any) -> bool:
        t = d[2] if d[0] == "place" else ty.STR
        return not isinstance(t, ListT) and t != ty.JSON and bool(self.leaves(d))

    def _list_key(self, d: Any) -> tuple | None:
        if d is not None and d[0] == "place" and isinstance(d[2], ListT):
            return d[1]
        return None

    def _cmp(self, e: ir.Cmp, vars: dict, weight: int) -> None:
        op = e.op
        # len(LIST) compared with a constant bounds the list; with anything else it does not.
        # len(STRING) compared with constants is a cell atom (automata.py).
        for side, other in ((e.left, e.right), (e.right, e.left)):
            if isinstance(side, ir.Len):
                inner = self.desc(side.arg, vars) if not isinstance(side.arg, ir.Ctx) or side.arg.source != "session" else None
                consts = []
                if isinstance(other, ir.Lit):
                    vals = other.value if isinstance(other.value, (tuple, frozenset)) else [other.value]
                    consts = [v for v in vals if isinstance(v, int) and not isinstance(v, bool)]
                    if len(consts) != len(vals):
                        consts = []
                key = self._list_key(inner)
                if key is not None:
                    if consts:
                        self.lists[key].len_const = max(self.lists[key].len_const, max(consts))
                    else:
                        self.lists[key].unbounded = "a list's length is compared with a non-constant"
                elif inner is not None and inner[0] != "lits" and self._is_string(inner):
                    if consts:
                        for c in consts:
                            for leaf in self.leaves(inner).values():
                                self.plan.atom(leaf, ("len", c - 1))
                                self.plan.atom(leaf, ("len", c))
                        other_d = self._operand(other, vars)
                        return
                    for leaf in self.leaves(inner).values():
                        self.plan.not_unary(leaf)
        if isinstance(e.left, ir.Ctx) and e.left.source == "session" and e.left.key == "tags" or \
           isinstance(e.right, ir.Ctx) and e.right.source == "session" and e.right.key == "tags":
            elem = e.right if op == "contains" else e.left
            if isinstance(elem, ir.Lit):
                self.features.tags.add(elem.value)
            else:
                self.features.all_tags = True
                d = self._operand(elem, vars)
                self.add_literals(d, list(self.policy.tags))
            return
        dl, dr = self._operand(e.left, vars), self._operand(e.right, vars)
        if op in ("==", "!="):
            self._eq(dl, dr)
        elif op in ("in", "not in") or (op == "contains" and self._is_collection(dr if op != "contains" else dl)):
            elem, coll = (dl, dr) if op != "contains" else (dr, dl)
            self._member(elem, coll, weight)
        elif op in ("startswith", "endswith", "contains"):
            kind = {"startswith": "prefix", "endswith": "suffix", "contains": "contains"}[op]
            if dr is not None and dr[0] == "lits" and dl is not None and dl[0] != "lits":
                for leaf in self.leaves(dl).values():
                    for v in dr[1]:
                        self.plan.atom(leaf, (kind, v))
            else:
                for d in (dl, dr):
                    if d is not None and d[0] != "lits":
                        for leaf in self.leaves(d).values():
                            self.plan.not_unary(leaf)

    def _is_collection(self, d: Any) -> bool:
        if d is None:
            return False
        if d[0] == "lits":
            return d[2] == "tags" or (bool(d[1]) and isinstance(d[1][0], (tuple, frozenset)))
        return d[0] == "place" and isinstance(d[2], ListT)

    def _eq(self, dl: Any, dr: Any) -> None:
        if dl is None or dr is None:
            return
        if dl[0] == "lits" and dr[0] != "lits":
            self.add_literals(dr, dl[1])
        elif dr[0] == "lits" and dl[0] != "lits":
            self.add_literals(dl, dr[1])
        elif dl[0] != "lits" and dr[0] != "lits":
            self.join(dl, dr)

    def _member(self, elem: Any, coll: Any, weight: int) -> None:
        if coll is None:
            return
        if coll[0] == "lits":
            items = []
            for c in coll[1]:
                items.extend(c if isinstance(c, (tuple, frozenset)) else [c])
            if elem is not None and elem[0] != "lits":
                self.add_literals(elem, items)
            return
        key = self._list_key(coll)
        if key is None:
            return
        self.lists[key].members += weight
        elem_place = ("place", key + ("[]",), coll[2].elem)
        if elem is None:
            return
        if elem[0] == "lits":
            self.add_literals(elem_place, elem[1])
        else:
            self.join(elem, elem_place)

    def _from(self, e: ir.From, vars: dict) -> None:
        d = self._operand(e.value, vars)
        if e.source == "user":
            self.features.user = True
            self.user_from = True
        elif e.source == "untrusted":
            self.features.untrusted = True
        else:
            self.features.from_selectors.add(e.tools)
        if d is None or d[0] == "lits":
            if d is not None and d[0] == "lits":
                raise Unsupported("`from` on a literal value is not analysed")
            return
        t = d[2] if d[0] == "place" else ty.STR
        tag = type_tag(t)
        if tag is None:
            return
        group = self.from_groups.setdefault(tag, [])
        group.append(d)
        self.join(group[0], d)

    def _quant(self, e: ir.Quant, vars: dict, weight: int) -> None:
        d = self._operand(e.collection, vars)
        self.depth += 1
        if d is None:
            binding = None
        elif d[0] == "lits":
            items: list = []
            for c in d[1]:
                items.extend(c if isinstance(c, (tuple, frozenset)) else [c])
            binding = ("lits", items, None)
        else:
            key = self._list_key(d)
            if key is None:
                binding = None
            else:
                use = self.lists[key]
                use.quantifiers += weight
                if self.depth > 1:
                    use.unbounded = "quantifiers over lists are nested"
                binding = ("place", key + ("[]",), d[2].elem)
        self.walk(e.body, {**vars, e.var: binding}, weight)
        self.depth -= 1

    def assignment(self, a: ir.Assignment) -> None:
        target = self.desc(ir.Param(name=a.param), {})
        if isinstance(a.value, ir.Lit):
            self.add_literals(target, [a.value.value])
        else:
            src = self._operand(a.value, {})
            self._eq(target, src)

    def bounds(self) -> dict[tuple, ListBound]:
        out = {}
        for key, use in self.lists.items():
            need = max(3 * use.quantifiers + use.members, use.len_const + 1, use.eq_len)
            if use.unbounded:
                out[key] = ListBound(k=max(min(LIST_CAP, max(need, 3)), use.eq_len), exact=False, why=use.unbounded)
            elif need > LIST_CAP:
                out[key] = ListBound(k=max(LIST_CAP, use.eq_len), exact=False,
                                     why=f"{need} elements would be needed to cover every case")
            else:
                out[key] = ListBound(k=need, exact=True)
        return out


def type_tag(t: Any) -> str | None:
    """Values of one tag share provenance when equal (and are joined for that)."""
    if t == ty.STR or isinstance(t, EnumT):
        return "str"
    if t == ty.PATH:
        return "path"
    if t == ty.EMAIL:
        return "email"
    if t == ty.URL:
        return "url"
    if t == ty.INT:
        return "int"
    if t == ty.DECIMAL:
        return "decimal"
    return None


# ---- the encoding ---------------------------------------------------------------------------

@attrs.frozen
class Env:
    """What `params.x` and quantifier variables mean where a condition is encoded."""
    params: Any  # dict name -> (SVal, present)
    vars: tuple = ()

    def bind(self, name: str, v: V) -> "Env":
        return Env(params=self.params, vars=((name, v),) + self.vars)

    def var(self, name: str) -> V:
        for n, v in self.vars:
            if n == name:
                return v
        raise AnalysisBug(f"unbound variable `{name}`")


class ToolEncoding:
    """Variables and formulas for one tool, for one policy (check) or two (diff)."""

    def __init__(self, policies: Sequence[ir.Policy], tool_name: str, prefix: str = "") -> None:
        self.policies = list(policies)
        tools = [p.tool(tool_name) for p in self.policies]
        self.tool = next(t for t in tools if t is not None)
        for t in tools:
            if t is not None and t.params != self.tool.params:
                raise Unsupported(f"tool `{tool_name}` has different parameters in the two policies")
        self.name = tool_name
        self.prefix = prefix or tool_name
        self.constraints: list[z3.BoolRef] = []
        self._plan()
        self._make_params()
        self.session = SessionModel(self.policies, self.features, self.prefix)
        self.ctx_values: dict[tuple, SVal] = {}
        self._tri_cache: dict[tuple, Tri] = {}

    # -- planning

    def _plan(self) -> None:
        planner = _Planner(self.policies, self.tool)
        for pi, policy in enumerate(self.policies):
            planner.policy = policy
            if policy.tool(self.name) is None:
                continue
            for rule in policy.rules_for(self.name):
                # Forbids are evaluated twice: on the params and on a MODIFY's new params.
                planner.walk(rule.condition, {}, 2 if rule.effect == "forbid" else 1)
                for a in rule.assignments:
                    planner.assignment(a)
            for a in policy.asserts:
                if self.name in a.tools:
                    planner.walk(a.condition, {})
        if planner.user_from and (("intent", "entities") in planner.reads or ("intent", "text") in planner.reads):
            raise Unsupported("`from user` together with reading `intent.entities` or `intent.text` directly "
                              "is not encoded")
        planner.plan.freeze()
        self.plan = planner.plan
        self.bounds = planner.bounds()
        self.features = planner.features
        n_json = max(1, len(planner.json_leaves) * LIST_CAP)
        self.json = JsonDomain(planner.json_literals, n_json, self.prefix)
        self.constraints += self.json.constraints()

    # -- variables

    def _bound(self, key: tuple) -> ListBound:
        return self.bounds.get(key, ListBound(k=0, exact=True))

    def make_value(self, key: tuple, t: Any, name: str) -> SVal:
        if isinstance(t, ListT):
            b = self._bound(key)
            length = z3.Int(f"{name}!len")
            self.constraints += [length >= 0, length <= b.k]
            elems = [self.make_value(key + ("[]",), t.elem, f"{name}[{i}]") for i in range(b.k)]
            return ListV(length, elems)
        if t == ty.INT:
            v = z3.Int(name)
            limit = z3.IntVal(NUMBER_LIMIT_TEXT)
            self.constraints += [v > -limit, v < limit]
            return NumV(v, True)
        if t == ty.DECIMAL:
            v = z3.Real(name)
            limit = z3.RealVal(NUMBER_LIMIT_TEXT)
            self.constraints += [v > -limit, v < limit]
            return NumV(v, False)
        if t == ty.BOOL:
            return BoolV(z3.Bool(name))
        if t == ty.JSON:
            v = z3.Int(name)
            self.constraints += [v >= 0, v < self.json.size]
            return JsonV(v, self.json)
        if t == ty.EMAIL:
            return EmailV(self.leaf(key + ("local",), "local", f"{name}.local"),
                          self.leaf(key + ("domain",), "domain", f"{name}.domain"))
        if t == ty.URL:
            return UrlV(*(self.leaf(key + (p,), kind, f"{name}.{p}")
                          for p, kind in (("scheme", "scheme"), ("host", "host"), ("path", "upath"), ("rest", "rest"))))
        if t == ty.PATH:
            s = self.leaf(key, "path", name)
            return PathV(s.term, s.comp, s.kind)
        if t == ty.STR:
            return self.leaf(key, "str", name)
        if isinstance(t, EnumT):
            return self.leaf(key, ("enum", tuple(t.values)), name)
        raise Unsupported(f"values of type `{ty.show(t)}` are not analysed")

    def leaf(self, key: tuple, kind: Any, name: str) -> StrV:
        if key not in self.plan.components:
            # A leaf nothing compares: one fresh class is exact.
            self.plan.leaf(key, kind)
            comp = strings.Component(root=key, leaves={key}, kinds={kind})
            fresh = strings.fresh_values({kind}, [], 1)
            comp.domain = list(kind[1]) if isinstance(kind, tuple) else fresh
            comp.fresh_start = len(comp.domain) if isinstance(kind, tuple) else 0
            comp.literals = set(comp.domain[:comp.fresh_start])
            self.plan.components[key] = comp
        comp = self.plan.component(key)
        if comp.string_theory:
            v = z3.String(name)
            r = kind_regex(kind)
            from aarmc.analysis.regex_z3 import SIGMA_STAR
            self.constraints.append(z3.InRe(v, r if r is not None else SIGMA_STAR))
            return StrV(v, comp, kind)
        v = z3.Int(name)
        self.constraints += [v >= 0, v < len(comp.domain)]
        if comp.mode == "cells":
            return StrV(v, comp, kind)
        for i in range(comp.fresh_start):
            if not strings.kind_valid(kind, comp.domain[i]):
                self.constraints.append(v != i)
        if isinstance(kind, tuple):
            self.constraints.append(v < comp.fresh_start)
        return StrV(v, comp, kind)

    def _make_params(self) -> None:
        self.params: dict[str, tuple[SVal, z3.BoolRef]] = {}
        for spec in self.tool.params:
            name = f"{self.prefix}!p.{spec.name}"
            v = self.make_value(("p", spec.name), spec.type, name)
            if isinstance(v, JsonV):
                # A params object's `null` means "absent" (values.validate_params), never a json null.
                self.constraints.append(v.ident != self.json.index(None))
            present = z3.Bool(f"{name}!present") if spec.may_be_absent else TRUE
            self.params[spec.name] = (v, present)
        self.env = Env(params=self.params)

    def ctx_value(self, source: str, key: str, pi: int) -> SVal:
        t = ty.ctx_type(source, key, self.policies[pi])
        if source == "env":
            for p in self.policies:
                other = next((v.type for v in p.env if v.name == key), t)
                if other != t:
                    raise Unsupported(f"`env.{key}` has different types in the two policies")
        k = (source, key)
        if k in self.ctx_values:
            return self.ctx_values[k]
        v = self.make_value(k, t, f"{self.prefix}!{source}.{key}")
        if source == "risk" or (source, key) == ("intent", "score"):
            self.constraints += [v.term >= 0, v.term <= 1]
        self.ctx_values[k] = v
        return v

    def take_constraints(self) -> list[z3.BoolRef]:
        """The constraints created since the last call (variables appear as formulas are encoded)."""
        self.session.finish()
        mine, theirs = getattr(self, "_taken", (0, 0))
        out = self.constraints[mine:] + self.session.constraints[theirs:]
        self._taken = (len(self.constraints), len(self.session.constraints))
        return out

    # -- values

    def val(self, e: ir.Expr, env: Env, pi: int) -> V:
        if isinstance(e, ir.Lit):
            return V(Lit(e.value))
        if isinstance(e, ir.Label):
            return V(NumV(z3.IntVal(e.level), True))
        if isinstance(e, ir.Param):
            return V(env.params[e.name][0])
        if isinstance(e, ir.Var):
            return env.var(e.name)
        if isinstance(e, ir.Field):
            b = self.val(e.base, env, pi)
            if isinstance(b.v, Lit):
                return V(Lit(getattr(b.v.value, e.name)), b.ok, b.fail)
            return V(b.v.field(e.name), b.ok, b.fail)
        if isinstance(e, ir.Ctx):
            if e.source == "session":
                if e.key == "tags":
                    return V(TagsV({g: self.session.tag(g, pi) for g in self.policies[pi].tags}))
                if e.key == "level":
                    return V(NumV(self.session.level[pi], True))
                if e.key == "actions":
                    return V(NumV(self.session.actions, True))
                raise AnalysisBug(f"session.{e.key}")
            present = self.session.present(e.source, e.key)
            return V(self.ctx_value(e.source, e.key, pi), ok=present)
        if isinstance(e, ir.Count):
            n, known = self.session.count(e.tools, e.within_s)
            return V(NumV(n, True), ok=known)
        if isinstance(e, ir.Len):
            a = self.val(e.arg, env, pi)
            x = a.v
            if isinstance(x, Lit):
                return V(Lit(len(x.value)), a.ok, a.fail)
            if isinstance(x, ListV):
                return V(NumV(x.length, True), a.ok, a.fail)
            if isinstance(x, TagsV):
                return V(NumV(z3.Sum([z3.If(b, 1, 0) for b in x.has.values()]) if x.has else z3.IntVal(0), True),
                         a.ok, a.fail)
            if isinstance(x, JsonV):
                kind = x.dom.kind_term(x.ident)
                sized = or_(kind == JsonDomain.STR, kind == JsonDomain.ARR, kind == JsonDomain.OBJ)
                return V(NumV(x.dom.len_term(x.ident), True), and_(a.ok, sized), or_(a.fail, and_(a.ok, not_(sized))))
            if isinstance(x, StrV):
                return V(NumV(x.length(), True), a.ok, a.fail)
            raise AnalysisBug("len of an unexpected value")
        # A condition used as a value (`params.flag == (params.x > 1)`).
        tri = self.cond(e, env, pi)
        return V(BoolV(tri.t), or_(tri.t, tri.f), tri.x)

    # -- conditions

    def rule_tri(self, rule: ir.Rule, pi: int, env: Env | None = None, tag: str = "") -> Tri:
        """A rule's condition, encoded once per (policy, params environment)."""
        key = (pi, rule.id, tag)
        if key not in self._tri_cache:
            self._tri_cache[key] = self.cond(rule.condition, env or self.env, pi)
        return self._tri_cache[key]

    def cond(self, e: ir.Expr | None, env: Env, pi: int) -> Tri:
        if e is None:
            return Tri(TRUE, FALSE)
        if isinstance(e, ir.Lit):
            return Tri(TRUE, FALSE) if e.value is True else Tri(FALSE, TRUE)
        if isinstance(e, ir.Not):
            return self.cond(e.operand, env, pi).negate()
        if isinstance(e, ir.And):
            return kand([self.cond(i, env, pi) for i in e.items])
        if isinstance(e, ir.Or):
            return kor([self.cond(i, env, pi) for i in e.items])
        if isinstance(e, ir.Has):
            if isinstance(e.target, ir.Param):
                p = env.params[e.target.name][1]
                return Tri(p, not_(p))
            if e.target.source == "session":
                return Tri(TRUE, FALSE)
            p = self.session.present(e.target.source, e.target.key)
            return Tri(p, not_(p))
        if isinstance(e, ir.Used):
            u = self.session.used(e.tools)
            return Tri(u, not_(u))
        if isinstance(e, ir.Cmp):
            return self._cmp(e, env, pi)
        if isinstance(e, ir.Match):
            a = self.val(e.value, env, pi)
            if isinstance(a.v, Lit):
                from aarm_runtime.regex import matches as py_matches
                phi = z3.BoolVal(py_matches(e.pattern, e.flags, a.v.value))
            elif a.v.mode == "cells":
                phi = a.v.atom(("re", e.pattern, e.flags))
            else:
                phi = re_matches(a.v.text(), e.pattern, e.flags)
            return self._atom(phi, a.ok, a.fail)
        if isinstance(e, ir.From):
            return self._from(e, env, pi)
        if isinstance(e, ir.Quant):
            return self._quant(e, env, pi)
        # A boolean value: a bool param, env attribute, `identity.delegated`, a variable.
        a = self.val(e, env, pi)
        if isinstance(a.v, Lit):
            return Tri(z3.BoolVal(bool(a.v.value)), z3.BoolVal(not a.v.value))
        if not isinstance(a.v, BoolV):
            raise AnalysisBug(f"not a condition: {e!r}")
        return self._atom(a.v.term, a.ok, a.fail)

    @staticmethod
    def _atom(phi: z3.BoolRef, ok: z3.BoolRef, fail: z3.BoolRef) -> Tri:
        return Tri(and_(ok, phi), and_(ok, not_(phi)), fail)

    def _cmp(self, e: ir.Cmp, env: Env, pi: int) -> Tri:
        l, r = self.val(e.left, env, pi), self.val(e.right, env, pi)
        ok = and_(l.ok, r.ok)
        fail = or_(l.fail, r.fail)
        op = e.op
        if op in ("==", "!="):
            phi = eq(l.v, r.v)
            if op == "!=":
                phi = not_(phi)
        elif op in ("<", "<=", ">", ">="):
            phi = num_cmp(op, as_num(l.v), as_num(r.v))
        elif op in ("in", "not in"):
            phi = member(l.v, r.v)
            if op == "not in":
                phi = not_(phi)
        elif op == "contains" and is_collection(l.v):
            phi = member(r.v, l.v)
        elif op in ("contains", "startswith", "endswith"):
            kind = {"startswith": "prefix", "endswith": "suffix", "contains": "contains"}[op]
            if isinstance(l.v, StrV) and l.v.mode == "cells" and isinstance(r.v, Lit):
                phi = l.v.atom((kind, r.v.value))
            elif isinstance(l.v, Lit) and isinstance(r.v, Lit):
                from aarmc.analysis.automata import holds
                phi = z3.BoolVal(holds((kind, r.v.value), l.v.value))
            elif op == "contains":
                phi = z3.Contains(text(l.v), text(r.v))
            elif op == "startswith":
                phi = z3.PrefixOf(text(r.v), text(l.v))
            else:
                phi = z3.SuffixOf(text(r.v), text(l.v))
        else:
            raise AnalysisBug(f"operator {op}")
        return Tri(and_(ok, phi), and_(ok, not_(phi)), and_(fail))

    def _from(self, e: ir.From, env: Env, pi: int) -> Tri:
        a = self.val(e.value, env, pi)
        v = a.v
        if isinstance(v, Lit):
            raise Unsupported("`from` on a literal value is not analysed")
        tag, tok = tokenizable(v)
        s = self.session
        if e.source == "user":
            t, f = s.from_user(v, tag, tok)
            return Tri(and_(a.ok, t), and_(a.ok, f), a.fail)
        if e.source == "untrusted":
            phi = s.from_untrusted(v, tag, tok, pi)
        else:
            phi = s.from_tools(v, tag, tok, e.tools)
        return self._atom(phi, a.ok, a.fail)

    def _quant(self, e: ir.Quant, env: Env, pi: int) -> Tri:
        c = self.val(e.collection, env, pi)
        items: list[tuple[Any, z3.BoolRef]]
        if isinstance(c.v, Lit):
            coll = c.v.value
            seq = sorted(coll, key=values.canonical_json) if isinstance(coll, frozenset) else list(coll)
            items = [(Lit(x), TRUE) for x in seq]
        elif isinstance(c.v, ListV):
            items = [(x, c.v.active(i)) for i, x in enumerate(c.v.elems)]
        elif isinstance(c.v, TagsV):
            items = [(Lit(g), b) for g, b in c.v.has.items()]
        else:
            raise AnalysisBug("quantifier over a non-list")
        bodies = [(self.cond(e.body, env.bind(e.var, V(x)), pi), act) for x, act in items]
        if e.kind == "all":
            t = and_(*(implies(act, b.t) for b, act in bodies))
            f = or_(*(and_(act, b.f) for b, act in bodies))
            x = and_(not_(f), or_(*(and_(act, b.x) for b, act in bodies)))
        else:
            t = or_(*(and_(act, b.t) for b, act in bodies))
            f = and_(*(implies(act, b.f) for b, act in bodies))
            x = and_(not_(t), or_(*(and_(act, b.x) for b, act in bodies)))
        return Tri(and_(c.ok, t), and_(c.ok, f), or_(c.fail, and_(c.ok, x)))


# ---- value helpers ---------------------------------------------------------------------------

def eq(a: Any, b: Any) -> z3.BoolRef:
    if isinstance(a, Lit) and isinstance(b, Lit):
        from aarmc.reference.evaluate import equal
        return z3.BoolVal(equal(a.value, b.value))
    if isinstance(a, Lit):
        return b.eq(a)
    return a.eq(b)


def as_num(a: Any) -> NumV:
    if isinstance(a, Lit):
        return NumV(NumV.lit_term(a.value), isinstance(a.value, int))
    if not isinstance(a, NumV):
        raise AnalysisBug("ordering a non-number")
    return a


def is_collection(a: Any) -> bool:
    return isinstance(a, (ListV, TagsV)) or (isinstance(a, Lit) and isinstance(a.value, (tuple, frozenset)))


def member(elem: Any, coll: Any) -> z3.BoolRef:
    if isinstance(coll, TagsV):
        if isinstance(elem, Lit):
            return coll.has.get(elem.value, FALSE)
        return or_(*(and_(elem.eq(Lit(g)), b) for g, b in coll.has.items()))
    if isinstance(coll, ListV):
        return or_(*(and_(coll.active(i), eq(elem, x)) for i, x in enumerate(coll.elems)))
    if isinstance(coll, Lit):
        return or_(*(eq(elem, Lit(x)) for x in coll.value))
    raise AnalysisBug("membership in a non-collection")


def text(a: Any) -> z3.SeqRef:
    if isinstance(a, Lit):
        from aarmc.analysis.regex_z3 import string_val
        return string_val(a.value)
    return a.text()


def tokenizable(v: SVal) -> tuple[str, z3.BoolRef]:
    """(type tag, whether the value has a provenance token: at least 3 characters)."""
    if isinstance(v, (EmailV, UrlV)):
        return ("email" if isinstance(v, EmailV) else "url"), TRUE
    if isinstance(v, NumV):
        if v.is_int:
            return "int", or_(v.term >= 100, v.term <= -10)
        return "decimal", not_(and_(z3.IsInt(v.term), v.term >= -9, v.term <= 99))
    if isinstance(v, StrV):
        tag = "path" if isinstance(v, PathV) else "str"
        if v.exact_classes:
            ok = [i for i, x in enumerate(v.comp.domain) if len(x) >= 3]
            return tag, or_(*(v.term == i for i in ok))
        return tag, z3.Length(v.term) >= 3
    raise AnalysisBug("`from` on a value without a token")
