"""The checker's model of a session: exactly the contexts a session file can produce.

A model of these variables is always *realisable*: `witness.py` turns it into
a session file (LANGUAGE.md §7) that the reference interpreter reads back as
the same facts. The facts are not bounded approximations but derived exactly
from per-tool history counts:

- Tools are grouped into *classes*: tools that every selector of the tool's
  conditions (`count`, `used`, `from`) treats alike and whose outputs
  contribute the same tags, label and trust are indistinguishable to those
  conditions. An undeclared tool (unknown classification: top label,
  untrusted, no tags) is a class of its own. `n[c] >= 0` is the number of
  history entries of class `c`.
- `session.actions = Σ n[c]`; `count(S) = Σ_{c ⊆ S} n[c]`; `used(S) ⇔ count(S) > 0`
  (so counts are monotonic in the selector and bounded by `session.actions`).
- `count(S within D) = Σ_{c ⊆ S} w[c, D]` with `0 ≤ w[c, D1] ≤ w[c, D2] ≤ n[c]`
  for `D1 < D2` (monotonic in the window); it is known iff `now` is present
  and no entry of a selected class lacks a `time` (`untimed[c] ⇒ n[c] > 0`).
- `tag g ∈ session.tags ⇔ ∨_{c tagged g} n[c] > 0` and
  `session.level = max({0} ∪ {level(c) : n[c] > 0})`: the tags are exactly the
  union of the used tools' tags and the level exactly the maximum of their
  labels (not merely bounded by them).
- Provenance: `p[v, c]` = the value `v` occurs as a token in a recorded output
  of class `c`; `p[v, c] ⇒ n[c] > 0 ∧ v has a token` (at least 3 characters).
  `v from SEL = ∨_{c ⊆ SEL} p[v, c]`, `v from untrusted = ∨_{c untrusted} p[v, c]`
  (so from-SEL implies used(SEL), and from untrusted implies some untrusted
  output). `v from user` is Kleene: unknown without intent, otherwise true iff
  `v` token-equals an entity (`me[v]`, needs `intent.entities`) or occurs in
  the text (`mt[v]`, needs `intent.text`), unknown if neither matches and one
  of the two is absent. Equal values have equal provenance.
- Every optional context field has a `present` boolean (intent and its keys,
  each identity key, each env attribute, each risk key, `now`); intent keys
  imply intent; risk values and the intent score lie in [0, 1].

One thing a boolean cannot see is that one token may contain another (an
output holding `bob@x.example` also holds `x.example`? no — `@` touches it —
but `"a b"` holds `a b` and `b`). The witness builder checks every provenance
fact of the concrete session and, when a value's token forces another's,
adds that implication as a lemma and asks the solver again (see witness.py).
"""

from __future__ import annotations


import attrs
import z3

from aarmc.analysis.symbolic import FALSE, SVal, and_, implies, is_false, or_
from aarmc.semantics import ir

UNDECLARED_TOOL = "undeclared.tool"


@attrs.define
class Features:
    """What the conditions of one tool read from the session."""
    selectors: set = attrs.field(factory=set)  # tuples of tool names (count / used / from)
    windows: dict = attrs.field(factory=dict)  # selector -> set of within_s
    from_selectors: set = attrs.field(factory=set)
    tags: set = attrs.field(factory=set)  # tags read by name
    all_tags: bool = False  # len(session.tags) or a quantifier over them
    level: bool = False
    actions: bool = False
    untrusted: bool = False
    user: bool = False


@attrs.define
class ToolClass:
    """Tools the conditions cannot tell apart; per-policy facts are tuples indexed by policy."""
    index: int
    members: tuple
    name: str  # the tool written in witnesses
    level: tuple  # per policy: contribution to session.level (None: `returns none`)
    tags: tuple  # per policy: tags of its output
    untrusted: tuple  # per policy
    windows: tuple  # window sizes (s) that count this class, ascending


def _output(policy: ir.Policy, name: str) -> ir.Output:
    t = policy.tool(name)
    return t.output if t is not None else ir.Output(none=False, declared=False)


def output_level(policy: ir.Policy, out: ir.Output) -> int | None:
    if out.none:
        return None
    if not out.declared:
        return policy.top_level
    return out.level


def output_untrusted(out: ir.Output) -> bool:
    return not out.none and (out.untrusted or not out.declared)


class SessionModel:
    """The session variables for one tool, under one policy (check) or two (diff: one session
    file, a context derived per policy)."""

    def __init__(self, policies: list[ir.Policy], features: Features, prefix: str) -> None:
        self.policies = policies
        self.f = features
        self.prefix = prefix
        self.constraints: list[z3.BoolRef] = []
        self._build_classes()
        self.n = [z3.Int(f"{prefix}!n{c.index}") for c in self.classes]
        self.constraints += [n >= 0 for n in self.n]
        self.windowed = any(self.f.windows.values())
        self.now = z3.Bool(f"{prefix}!now") if self.windowed else FALSE
        self.untimed = [z3.Bool(f"{prefix}!untimed{c.index}") if (self.windowed and c.windows) else FALSE
                        for c in self.classes]
        self.w: list[dict[int, z3.ArithRef]] = []
        for c in self.classes:
            ws = {}
            prev = None
            for d in c.windows:
                v = z3.Int(f"{prefix}!w{c.index}_{d}")
                self.constraints.append(v >= 0)
                if prev is not None:
                    self.constraints.append(prev <= v)
                prev = v
                ws[d] = v
            if prev is not None:
                self.constraints.append(prev <= self.n[c.index])
            self.w.append(ws)
            if not isinstance(self.untimed[c.index], bool) and not is_false(self.untimed[c.index]):
                self.constraints.append(implies(self.untimed[c.index], self.n[c.index] > 0))
        # session.level: exactly the maximum of the used classes' levels.
        self.level = []
        for pi in range(len(policies)):
            level = z3.Int(f"{prefix}!level{pi}")
            contributing = [c for c in self.classes if c.level[pi] is not None and c.level[pi] > 0]
            self.constraints.append(level >= 0)
            for c in contributing:
                self.constraints.append(implies(self.n[c.index] > 0, level >= c.level[pi]))
            self.constraints.append(or_(level == 0, *(and_(self.n[c.index] > 0, level == c.level[pi])
                                                      for c in contributing)))
            self.level.append(level)
        self.actions = z3.Sum(self.n) if self.n else z3.IntVal(0)
        # Provenance facts, created on demand.
        self.p: dict[tuple, z3.BoolRef] = {}
        self.me: dict[tuple, z3.BoolRef] = {}
        self.mt: dict[tuple, z3.BoolRef] = {}
        self.from_values: dict[tuple, tuple[SVal, str]] = {}
        self.presence: dict[tuple, z3.BoolRef] = {}
        self._linked: set = set()

    # -- classes

    def _build_classes(self) -> None:
        f = self.f
        sels = sorted(f.selectors | f.from_selectors, key=repr)
        names = sorted({t.name for p in self.policies for t in p.tools})
        undeclared = UNDECLARED_TOOL
        while any(undeclared in p.tool_map for p in self.policies):
            undeclared = "x" + undeclared
        groups: dict[tuple, list[str]] = {}
        for name in names + [undeclared]:
            sig: tuple = (tuple(name in s for s in sels),)
            for p in self.policies:
                out = _output(p, name)
                relevant_tags = set(p.tags) if f.all_tags else set(f.tags)
                sig += (
                    tuple(sorted(set(out.tags) & relevant_tags)) if not out.none else (),
                    output_level(p, out) if f.level else None,
                    output_untrusted(out) if f.untrusted else None,
                )
            groups.setdefault(sig, []).append(name)
        self.classes: list[ToolClass] = []
        ordered = sorted(groups.values(), key=lambda members: (members[0] == undeclared, members[0]))
        for i, members in enumerate(ordered):
            outs = [_output(p, members[0]) for p in self.policies]
            windows = set()
            for s, ws in f.windows.items():
                if members[0] in s:
                    windows |= set(ws)
            self.classes.append(ToolClass(
                index=i, members=tuple(members), name=members[0],
                level=tuple(output_level(p, o) for p, o in zip(self.policies, outs)),
                tags=tuple(tuple(sorted(o.tags)) if not o.none else () for o in outs),
                untrusted=tuple(output_untrusted(o) for o in outs), windows=tuple(sorted(windows))))
        self.undeclared_name = undeclared

    def classes_in(self, tools: tuple) -> list[ToolClass]:
        return [c for c in self.classes if c.name in tools]

    # -- terms

    def count(self, tools: tuple, within_s: int | None) -> tuple[z3.ArithRef, z3.BoolRef]:
        cs = self.classes_in(tools)
        if within_s is None:
            return (z3.Sum([self.n[c.index] for c in cs]) if cs else z3.IntVal(0)), z3.BoolVal(True)
        known = and_(self.now, *(z3.Not(self.untimed[c.index]) for c in cs if not is_false(self.untimed[c.index])))
        return (z3.Sum([self.w[c.index][within_s] for c in cs]) if cs else z3.IntVal(0)), known

    def used(self, tools: tuple) -> z3.BoolRef:
        return or_(*(self.n[c.index] > 0 for c in self.classes_in(tools)))

    def tag(self, name: str, pi: int = 0) -> z3.BoolRef:
        return or_(*(self.n[c.index] > 0 for c in self.classes if name in c.tags[pi]))

    def present(self, source: str, key: str) -> z3.BoolRef:
        """Presence of an optional context field; ("intent", "") is the intent section itself."""
        k = (source, key)
        if k not in self.presence:
            v = z3.Bool(f"{self.prefix}!has_{source}_{key}")
            self.presence[k] = v
            if source == "intent" and key:
                self.constraints.append(implies(v, self.present("intent", "")))
        return self.presence[k]

    def _fact(self, table: dict, key: tuple, name: str, requires: z3.BoolRef) -> z3.BoolRef:
        if key not in table:
            v = z3.Bool(f"{self.prefix}!{name}{len(table)}")
            table[key] = v
            self.constraints.append(implies(v, requires))
        return table[key]

    def _register(self, v: SVal, type_tag: str, tokenizable: z3.BoolRef) -> tuple:
        k = v.key()
        self.from_values.setdefault(k, (v, type_tag, tokenizable))
        return k

    def from_tools(self, v: SVal, type_tag: str, tokenizable: z3.BoolRef, tools: tuple) -> z3.BoolRef:
        k = self._register(v, type_tag, tokenizable)
        return or_(*(self._fact(self.p, (k, c.index), "p", and_(self.n[c.index] > 0, tokenizable))
                     for c in self.classes_in(tools)))

    def from_untrusted(self, v: SVal, type_tag: str, tokenizable: z3.BoolRef, pi: int = 0) -> z3.BoolRef:
        k = self._register(v, type_tag, tokenizable)
        return or_(*(self._fact(self.p, (k, c.index), "p", and_(self.n[c.index] > 0, tokenizable))
                     for c in self.classes if c.untrusted[pi]))

    def from_user(self, v: SVal, type_tag: str, tokenizable: z3.BoolRef) -> tuple[z3.BoolRef, z3.BoolRef]:
        """(true, false) of `v from user`; neither = unknown."""
        k = self._register(v, type_tag, tokenizable)
        intent = self.present("intent", "")
        ents, text = self.present("intent", "entities"), self.present("intent", "text")
        me = self._fact(self.me, k, "me", and_(ents, tokenizable))
        mt = self._fact(self.mt, k, "mt", and_(text, tokenizable))
        true = and_(intent, or_(and_(ents, me), and_(text, mt)))
        false = and_(intent, ents, z3.Not(me), text, z3.Not(mt))
        return true, false

    def finish(self) -> None:
        """Equal values have equal provenance (pairwise, within one type)."""
        keys = list(self.from_values)
        for i, a in enumerate(keys):
            va, ta, tok_a = self.from_values[a]
            for b in keys[i + 1:]:
                vb, tb, tok_b = self.from_values[b]
                if ta != tb:
                    continue
                same = va.eq(vb)
                if is_false(same):
                    continue
                ents, text = self.present("intent", "entities"), self.present("intent", "text")
                for table, name, req in ((self.me, "me", ents), (self.mt, "mt", text)):
                    if (a in table or b in table) and (a, b, name) not in self._linked:
                        self._linked.add((a, b, name))
                        fa = self._fact(table, a, name, and_(req, tok_a))
                        fb = self._fact(table, b, name, and_(req, tok_b))
                        self.constraints.append(implies(same, fa == fb))
                for c in self.classes:
                    if ((a, c.index) in self.p or (b, c.index) in self.p) and (a, b, c.index) not in self._linked:
                        self._linked.add((a, b, c.index))
                        fa = self._fact(self.p, (a, c.index), "p", and_(self.n[c.index] > 0, tok_a))
                        fb = self._fact(self.p, (b, c.index), "p", and_(self.n[c.index] > 0, tok_b))
                        self.constraints.append(implies(same, fa == fb))
