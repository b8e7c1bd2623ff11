"""From a solver model to a concrete, minimal, replayed action + session (LANGUAGE.md §7).

1. Minimise: with the query still asserted, prefer absent context, empty
   history, absent optional params, empty lists, numbers near 0 and short
   strings — one preference at a time, kept when still satisfiable.
2. Realise: read every variable back as a canonical value and build the
   session file that produces exactly the modelled facts (history entries of
   one tool per class, outputs carrying the tokens the provenance facts need,
   times spread over the windows, intent entities / text for `from user`).
3. Check realisability: validate the params as the runtime does and recompute
   every provenance fact of the concrete session. A value the runtime rejects
   (the string-theory domains of hosts and url paths over-approximate) or a
   token that another token forces into an output (`a b` carries `b`) becomes
   a lemma — a fact true of every real session — and the solver is asked again.
   The lemmas only remove unrealisable models, so an `unsat` after them is a
   proof.
4. Replay: the caller's claim is checked against `aarmc.reference.decide`; a
   mismatch raises `WitnessError` (a checker bug, never shown as a finding).
"""

from __future__ import annotations

import datetime
import decimal
from decimal import Decimal
from typing import Any, Callable

import z3
from aarm_runtime import values

from aarmc.analysis.encode import ToolEncoding, Unsupported
from aarmc.analysis.regex_z3 import string_val
from aarmc.analysis.symbolic import (
    AnalysisBug, BoolV, EmailV, JsonV, ListV, NumV, StrV, SVal, UrlV, and_, is_false, is_true,
    to_json_value,
)
from aarmc.analysis.report import WitnessError

MAX_ROUNDS = 12
EPOCH_NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
PRINTABLE = z3.Star(z3.Range(" ", "~"))


def _leaves(v: SVal) -> list[SVal]:
    if isinstance(v, (EmailV,)):
        return [v.local, v.domain]
    if isinstance(v, UrlV):
        return list(v.parts.values())
    if isinstance(v, ListV):
        out: list[SVal] = []
        for e in v.elems:
            out += _leaves(e)
        return out
    return [v]


def pin(v: SVal, model: z3.ModelRef) -> z3.BoolRef:
    """The value `v` has in `model`, as a constraint on its variables."""
    if isinstance(v, (EmailV, UrlV)):
        return and_(*(pin(x, model) for x in _leaves(v)))
    if isinstance(v, ListV):
        n = model.eval(v.length, model_completion=True)
        return and_(v.length == n, *(pin(e, model) for e in v.elems[: n.as_long()]))
    if isinstance(v, StrV):
        return v.term == model.eval(v.term, model_completion=True)
    if isinstance(v, NumV):
        return v.term == model.eval(v.term, model_completion=True)
    if isinstance(v, BoolV):
        return v.term == model.eval(v.term, model_completion=True)
    if isinstance(v, JsonV):
        return v.ident == model.eval(v.ident, model_completion=True)
    raise AnalysisBug("pin of an unexpected value")


class _Prefs:
    """Greedy minimisation inside pushed solver frames (the caller pops them)."""

    def __init__(self, solver: z3.Solver) -> None:
        self.s = solver
        self.frames = 0
        self.model = solver.model()

    def prefer(self, *constraints: z3.BoolRef) -> bool:
        self.s.push()
        self.s.add(*constraints)
        if self.s.check() == z3.sat:
            self.frames += 1
            self.model = self.s.model()
            return True
        self.s.pop()
        return False

    def prefer_all(self, items: list[z3.BoolRef]) -> None:
        """Keep as many of `items` as possible: all at once, else each half (recursively)."""
        if not items or self.prefer(*items) or len(items) == 1:
            return
        mid = len(items) // 2
        self.prefer_all(items[:mid])
        self.prefer_all(items[mid:])

    def pop(self) -> None:
        for _ in range(self.frames):
            self.s.pop()
        self.frames = 0


def _number_candidates(v: NumV, model: z3.ModelRef) -> list[Any]:
    cur = model.eval(v.term, model_completion=True)
    out: list[Any] = [0, 1, -1]
    if v.is_int:
        c = cur.as_long()
        for mag in (10, 100, 1000, 10 ** 4, 10 ** 6):
            out += [mag, -mag, mag + 1]
        out.append(c)
        return out
    num, den = cur.numerator_as_long(), cur.denominator_as_long()
    with decimal.localcontext() as dc:
        dc.prec = max(100, len(str(abs(num))) + 50)
        value = Decimal(num) / Decimal(den)
        for places in range(0, 30):
            step = Decimal(1).scaleb(-places)
            q = value.quantize(step) if places else value.to_integral_value()
            out += [q, q + step, q - step]
    return out


class WitnessBuilder:
    def __init__(self, enc: ToolEncoding) -> None:
        self.enc = enc
        self.session = enc.session

    # -- minimisation

    def minimise(self, solver: z3.Solver) -> _Prefs:
        """Absent context, empty history, absent optional params, zeros and empty strings where the
        query allows them (tried together, then halved); then small numbers and short strings."""
        p = _Prefs(solver)
        s = self.session
        bulk: list[z3.BoolRef] = [z3.Not(b) for b in s.presence.values()]
        if not is_false(s.now):
            bulk.append(z3.Not(s.now))
        bulk += [n == 0 for n in s.n]
        bulk += [z3.Not(u) for u in s.untimed if not is_false(u)]
        bulk += [z3.Not(b) for table in (s.p, s.me, s.mt) for b in table.values()]
        bulk += [w == 0 for ws in s.w for w in ws.values()]
        bulk += [z3.Not(present) for _, present in self.enc.params.values() if not is_true(present)]
        leaves: list[SVal] = []
        for v in [v for v, _ in self.enc.params.values()] + list(self.enc.ctx_values.values()):
            self._collect(v, bulk, leaves)
        p.prefer_all(bulk)
        for n in s.n:
            if p.model.eval(n, model_completion=True).as_long() > 1:
                p.prefer(n <= 1)
        for v in leaves:
            self._refine(p, v)
        return p

    def _collect(self, v: SVal, bulk: list, leaves: list) -> None:
        if isinstance(v, ListV):
            bulk.append(v.length == 0)
            for e in v.elems:
                self._collect(e, bulk, leaves)
            return
        if isinstance(v, (EmailV, UrlV)):
            for x in _leaves(v):
                self._collect(x, bulk, leaves)
            return
        if isinstance(v, NumV):
            bulk.append(v.term == 0)
            leaves.append(v)
        elif isinstance(v, BoolV):
            bulk.append(z3.Not(v.term))
        elif isinstance(v, StrV) and not v.exact_classes:
            bulk.append(v.term == string_val(""))
            leaves.append(v)

    def _refine(self, p: _Prefs, v: SVal) -> None:
        model = p.model
        if isinstance(v, NumV):
            if model.eval(v.term, model_completion=True).eq(z3.IntVal(0) if v.is_int else z3.RealVal(0)):
                return
            for c in _number_candidates(v, model):
                if p.prefer(v.term == (NumV.lit_term(c) if not v.is_int else c)):
                    return
            if not v.is_int:
                raise Unsupported("no finite decimal value found for a decimal variable")
            return
        if isinstance(v, StrV):
            if z3.is_true(model.eval(z3.Length(v.term) == 0, model_completion=True)):
                return
            for n in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32):
                if p.prefer(z3.Length(v.term) <= n):
                    break
            p.prefer(z3.InRe(v.term, PRINTABLE))

    # -- realisation

    def realise(self, model: z3.ModelRef) -> tuple[dict, dict, dict]:
        """(action, session, facts) where facts maps provenance keys to concrete tokens."""
        enc = self.enc
        params: dict[str, Any] = {}
        concrete: dict[str, Any] = {}
        for name, (v, present) in enc.params.items():
            if z3.is_true(model.eval(present, model_completion=True)):
                cv = v.concrete(model)
                concrete[name] = cv
                params[name] = to_json_value(cv)
        action = {"tool": enc.name, "params": params}
        s = self.session
        session: dict[str, Any] = {}
        is_true = lambda b: z3.is_true(model.eval(b, model_completion=True))  # noqa: E731
        present = {k: is_true(b) for k, b in s.presence.items()}
        # identity
        identity: dict[str, Any] = {}
        for (source, key), here in present.items():
            if source != "identity" or not here:
                continue
            v = enc.ctx_value(source, key, 0)
            if key == "delegated":
                identity["delegation"] = ([{"from": "principal", "to": "agent"}] if v.concrete(model) else [])
            else:
                identity[key] = to_json_value(v.concrete(model))
        if identity:
            session["identity"] = identity
        # intent
        if present.get(("intent", ""), False):
            intent: dict[str, Any] = {}
            for (source, key), here in present.items():
                if source != "intent" or not key or not here:
                    continue
                if key == "entities" and ("intent", "entities") not in enc.ctx_values:
                    intent["entities"] = self._user_tokens(model, s.me)
                elif key == "text" and ("intent", "text") not in enc.ctx_values:
                    intent["text"] = " ".join(self._user_tokens(model, s.mt))
                else:
                    intent[key] = to_json_value(enc.ctx_value("intent", key, 0).concrete(model))
            session["intent"] = intent
        env = {key: to_json_value(enc.ctx_value("env", key, 0).concrete(model))
               for (source, key), here in present.items() if source == "env" and here}
        if env:
            session["env"] = env
        risk = {key: enc.ctx_value("risk", key, 0).concrete(model)
                for (source, key), here in present.items() if source == "risk" and here}
        if risk:
            session["risk"] = risk
        # history
        timed = s.windowed and is_true(s.now)
        entries: list[tuple[Any, dict]] = []
        for c in s.classes:
            n = model.eval(s.n[c.index], model_completion=True).as_long()
            if n == 0:
                continue
            tokens = self._class_tokens(model, c.index)
            outputs: list[Any] = [None] * n
            for i, tok in enumerate(tokens):
                slot = min(i, n - 1)
                outputs[slot] = tok if outputs[slot] is None else outputs[slot] + " " + tok
            times: list[Any] = [None] * n
            if timed and not is_true(s.untimed[c.index]):
                counts = [model.eval(s.w[c.index][d], model_completion=True).as_long() for d in c.windows]
                ages: list[int] = []
                prev = 0
                for d, w in zip([0] + list(c.windows[:-1]), counts):
                    ages += [d] * (w - prev)
                    prev = w
                last = c.windows[-1] if c.windows else 3600
                ages += [last] * (n - prev)
                times = [EPOCH_NOW - datetime.timedelta(seconds=a) for a in ages]
            for out, t in zip(outputs, times):
                entry: dict[str, Any] = {"tool": c.name}
                if t is not None:
                    entry["time"] = t.strftime("%Y-%m-%dT%H:%M:%SZ")
                if out is not None:
                    entry["output"] = out
                entries.append((t, entry))
        entries.sort(key=lambda te: (te[0] is not None, te[0] or EPOCH_NOW))
        if timed:
            session["now"] = EPOCH_NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
        if entries:
            session["history"] = [e for _, e in entries]
        return action, session, concrete

    def _token(self, key: tuple, model: z3.ModelRef) -> values.Token | None:
        v = self.session.from_values[key][0]
        return values.provenance_token(v.concrete(model))

    def _user_tokens(self, model: z3.ModelRef, table: dict) -> list[str]:
        out = []
        for key, b in table.items():
            if z3.is_true(model.eval(b, model_completion=True)):
                tok = self._token(key, model)
                if tok is None:
                    raise AnalysisBug("a provenance fact holds for a value without a token")
                if tok.text not in out:
                    out.append(tok.text)
        return out

    def _class_tokens(self, model: z3.ModelRef, ci: int) -> list[str]:
        out = []
        for (key, c), b in self.session.p.items():
            if c == ci and z3.is_true(model.eval(b, model_completion=True)):
                tok = self._token(key, model)
                if tok is None:
                    raise AnalysisBug("a provenance fact holds for a value without a token")
                if tok.text not in out:
                    out.append(tok.text)
        return out

    # -- realisability

    def lemmas(self, model: z3.ModelRef, action: dict, session: dict) -> list[z3.BoolRef]:
        """Facts of real sessions that this model violates (empty: the model is realised exactly)."""
        enc = self.enc
        out: list[z3.BoolRef] = []
        # Params the runtime rejects: exclude the offending string leaves' values.
        for name, (v, present) in enc.params.items():
            if name not in action["params"]:
                continue
            spec = enc.tool.param(name)
            try:
                got = values.validate(spec.type, action["params"][name])
            except values.InvalidValue:
                got = None
            if got is None or got != v.concrete(model):
                bad = [leaf for leaf in _leaves(v) if isinstance(leaf, StrV) and not leaf.exact_classes]
                if not bad:
                    raise AnalysisBug(f"invalid value for `params.{name}` from an exact encoding")
                out.append(z3.Not(and_(*(pin(leaf, model) for leaf in bad))))
        for key, v in enc.ctx_values.items():
            if isinstance(v, StrV) and not v.exact_classes:
                text = v.concrete(model)
                try:
                    values.check_string(text)
                except values.InvalidValue:
                    out.append(z3.Not(pin(v, model)))
        if out:
            return out
        # Provenance facts of the concrete session.
        s = self.session
        history = session.get("history", [])
        intent = session.get("intent", {})
        tokens = {k: self._token(k, model) for k in s.from_values}
        for (key, ci), b in s.p.items():
            claimed = z3.is_true(model.eval(b, model_completion=True))
            c = s.classes[ci]
            tok = tokens[key]
            actual = tok is not None and any(
                values.occurs_as_token(tok, values.output_text(e["output"]))
                for e in history if e["tool"] == c.name and "output" in e)
            if claimed and not actual:
                raise AnalysisBug("a provenance token was not written to the session")
            if actual and not claimed:
                out.append(self._forced(key, ci, model, tokens, s.p, lambda k2: (k2, ci)))
        for table, part in ((s.me, "entities"), (s.mt, "text")):
            for key, b in table.items():
                claimed = z3.is_true(model.eval(b, model_completion=True))
                tok = tokens[key]
                if part == "entities":
                    actual = tok is not None and any(values.token_equals(tok, e) for e in intent.get("entities", []))
                else:
                    actual = tok is not None and "text" in intent and values.occurs_as_token(tok, intent["text"])
                if claimed and not actual:
                    raise AnalysisBug("a user token was not written to the intent")
                if actual and not claimed:
                    out.append(self._forced(key, None, model, tokens, table, lambda k2: k2))
        return out

    def _forced(self, key, ci, model, tokens, table, fact_key) -> z3.BoolRef:
        """The lemma `v = a ∧ w = b ∧ fact(w) ⇒ fact(v)` for a token b that contains a as a token."""
        s = self.session
        mine = tokens[key]
        for k2, (v2, _, _) in s.from_values.items():
            f2 = table.get(fact_key(k2))
            if k2 == key or f2 is None or not z3.is_true(model.eval(f2, model_completion=True)):
                continue
            other = tokens[k2]
            if other is None:
                continue
            # Sound only if every spelling of `other` that matches contains `mine`, and only for
            # exact values (a cell stands for many strings; its representative is one of them).
            if other.caseless and not mine.caseless:
                continue
            if any(isinstance(x, StrV) and x.mode == "cells" for x in _leaves(v2) + _leaves(s.from_values[key][0])):
                continue
            if values.occurs_as_token(mine, other.text) or values.token_equals(mine, other.text):
                v = s.from_values[key][0]
                return z3.Implies(and_(pin(v, model), pin(v2, model), f2), table[fact_key(key)])
        raise Unsupported("two provenance tokens of one output interfere in a way the checker does not model")

    # -- the loop

    def find(self, solver: z3.Solver, replay: Callable[[dict, dict], str | None]) -> dict | None:
        """A replayed witness for the sat query on `solver` (pushed by the caller), or None when
        the lemmas show the query unsatisfiable."""
        for _ in range(MAX_ROUNDS):
            prefs = self.minimise(solver)
            model = prefs.model
            action, session, _ = self.realise(model)
            lemmas = self.lemmas(model, action, session)
            prefs.pop()
            if lemmas:
                solver.add(*lemmas)
                r = solver.check()
                if r == z3.unsat:
                    return None
                if r != z3.sat:
                    raise Unsupported("the solver gave up while refining a witness")
                continue
            witness = {"action": action, "session": session}
            problem = replay(action, session)
            if problem is not None:
                raise WitnessError(problem, witness=witness)
            return witness
        raise Unsupported("no realisable witness after several refinements")
