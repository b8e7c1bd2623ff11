"""Resolve a set of parsed files into one `ir.Policy`.

`resolve(modules)` is the semantic pass of the front end: it builds the scope
from every declaration (any file, any order), checks names and structure,
type-checks each rule and assert once per tool its selector covers
(`aarmc.semantics.types`), and lowers the set to the IR. Every problem is
collected; the policy is returned only when there is no error.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import attrs
from aarm_runtime import values
from aarm_runtime.values import EnumT, InvalidValue, ListT, Prim

from aarmc.diagnostics import Diagnostic, sort_diagnostics
from aarmc.semantics import ir
from aarmc.semantics.report import Sink, at, quoted
from aarmc.semantics.scope import CONTEXT_ROOTS, RESERVED_WORDS, Const, Scope, did_you_mean, expand_selector
from aarmc.semantics.types import ERROR, JSON, STR, TypeChecker, literal_value, show, validate_literal
from aarmc.source import Span
from aarmc.syntax import ast

PRIORITY_RANGE = (0, 1000)
_ARG_EFFECT = {ast.ModifyArgs: "modify", ast.StepUpArgs: "step_up", ast.DeferArgs: "defer"}


def resolve(modules: Sequence[ast.Module], *, digests: Sequence[ir.SourceDigest] = (),
            incomplete: bool = False) -> tuple[ir.Policy | None, list[Diagnostic]]:
    """The IR of a policy set and the sorted diagnostics; the policy is None iff there are errors.

    `modules` are in source order (files sorted by relative path). `incomplete`
    says that some file of the set failed to parse, so a missing `policy` or
    `default` may be in it and is not reported.
    """
    return _Resolver(modules, digests, incomplete).run()


class _Resolver:
    def __init__(self, modules: Sequence[ast.Module], digests: Sequence[ir.SourceDigest], incomplete: bool):
        self.modules = modules
        self.digests = tuple(digests)
        self.incomplete = incomplete
        self.sink = Sink()
        self.decls: dict[type, list[Any]] = {}
        for module in modules:
            for decl in module.decls:
                self.decls.setdefault(type(decl), []).append(decl)

    def of(self, cls: type) -> list[Any]:
        return self.decls.get(cls, [])

    def run(self) -> tuple[ir.Policy | None, list[Diagnostic]]:
        header = self.check_header()
        labels, tags = self.declare_names()
        self.labels, self.tags = labels, tags
        consts = self.lower_consts()
        env = self.lower_env()
        tools = self.lower_tools()
        self.scope = Scope(tools=tools, labels=labels, tags=tags, consts=consts,
                           env={n: t for n, (t, _) in env.items()})
        rules = self.lower_rules()
        asserts = self.lower_asserts()
        diags = sort_diagnostics(self.sink.items)
        if self.sink.failed or header is None:
            return None, diags
        name, version, default = header
        policy = ir.Policy(
            name=name, version=version, default=default, labels=labels, tags=tags,
            tools=tuple(tools[n] for n in sorted(tools)),
            env=tuple(ir.EnvVar(name=n, type=env[n][0], span=env[n][1]) for n in sorted(env)),
            consts=tuple((n, consts[n].value) for n in sorted(consts)),
            rules=rules, asserts=asserts, sources=self.digests,
        )
        return policy, diags

    # ---- header ------------------------------------------------------------------

    def check_header(self) -> tuple[str, str, str] | None:
        policy = self._exactly_once(ast.PolicyDecl, "policy", 'policy "NAME" version "1"', "E0201", "E0202")
        default = self._exactly_once(ast.DefaultDecl, "default", "default deny", "E0203", "E0204")
        if policy is None or default is None:
            return None
        return policy.name, policy.version, default.posture

    def _exactly_once(self, cls, word: str, example: str, missing: str, duplicate: str):
        found = self.of(cls)
        if not found:
            if not self.incomplete:
                self.sink.error(missing, f"the policy set has no `{word}` declaration", None,
                                help=f"add `{example}` to one file of the set")
            return None
        for extra in found[1:]:
            self.sink.error(duplicate, f"`{word}` is declared more than once", extra.span,
                            notes=[f"first declared at {at(found[0].span)}"],
                            help=f"a policy set has exactly one `{word}` declaration; remove one")
        return found[0]

    # ---- labels, tags, consts, env: one namespace --------------------------------------

    def declare_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        self.namespace: dict[str, tuple[str, Span | None]] = {}
        label_decls = self.of(ast.LabelsDecl)
        for extra in label_decls[1:]:
            self.sink.error("E0210", "`labels` is declared more than once", extra.span,
                            notes=[f"first declared at {at(label_decls[0].span)}"],
                            help="labels are one total order: declare them once, bottom first")
        labels: list[str] = []
        tags: list[str] = []
        self._const_ok: dict[int, bool] = {}
        self._env_ok: dict[int, bool] = {}
        # In source order, so that a clash is reported at the later declaration.
        for module in self.modules:
            for decl in module.decls:
                if isinstance(decl, ast.LabelsDecl) and decl is label_decls[0]:
                    labels.extend(n.value for n in decl.names if self._declare(n, "label"))
                elif isinstance(decl, ast.TagsDecl):
                    tags.extend(n.value for n in decl.names if self._declare(n, "tag"))
                elif isinstance(decl, ast.ConstDecl):
                    self._const_ok[id(decl)] = self._declare(decl.name, "const")
                elif isinstance(decl, ast.EnvDecl):
                    self._env_ok[id(decl)] = self._declare(decl.name, "env attribute")
        return tuple(labels), tuple(tags)

    def _declare(self, name: ast.Name, kind: str) -> bool:
        word = name.value
        bare = kind in ("label", "const")  # referenced by a bare name in conditions
        if word in RESERVED_WORDS or (bare and word in CONTEXT_ROOTS):
            self.sink.error("E0211", f"`{word}` is reserved and cannot name a {kind}", name.span,
                            help="choose another name")
            return False
        prev = self.namespace.get(word)
        if prev is not None:
            prev_kind, prev_span = prev
            message = (f"{kind} `{word}` is declared twice" if prev_kind == kind
                       else f"{kind} `{word}` clashes with the {prev_kind} `{word}`")
            self.sink.error("E0209", message, name.span,
                            notes=[f"the {prev_kind} `{word}` is declared at {at(prev_span)}"],
                            help="labels, tags, consts and env attributes share one namespace; rename one of them")
            return False
        self.namespace[word] = (kind, name.span)
        return True

    def lower_consts(self) -> dict[str, Const]:
        out = {}
        for decl in self.of(ast.ConstDecl):
            got = literal_value(decl.value, self.sink)
            if self._const_ok[id(decl)]:
                # an invalid const stays declared (as ERROR) so that its uses are not reported again
                value, t = got if got is not None else (None, ERROR)
                out[decl.name.value] = Const(name=decl.name.value, value=value, type=t, span=decl.name.span)
        return out

    def lower_env(self) -> dict[str, tuple[Any, Span | None]]:
        out = {}
        for decl in self.of(ast.EnvDecl):
            t = self._env_type(decl.type)
            if self._env_ok[id(decl)]:
                out[decl.name.value] = (t if t is not None else ERROR, decl.name.span)
        return out

    def _env_type(self, node: ast.TypeExpr) -> Any:
        if isinstance(node, ast.OptType):
            self.sink.error("E0317", "an env attribute cannot be optional", node.span,
                            help="every env attribute may be absent already; test it with `has env.NAME`")
            return None
        t = self._lower_type(node)
        if t is None:
            return None
        inner = t.elem if isinstance(t, ListT) else t
        if inner == JSON or isinstance(inner, ListT):
            self.sink.error("E0317", f"an env attribute cannot be `{show(t)}`", node.span,
                            help="env attributes are scalars or lists of scalars")
            return None
        return t

    # ---- types and tools --------------------------------------------------------------

    def _lower_type(self, node: ast.TypeExpr) -> Any:
        if isinstance(node, ast.PrimType):
            return Prim(node.name)
        if isinstance(node, ast.EnumType):
            seen: set[str] = set()
            ok = True
            for value in node.values:
                if value in seen:
                    self.sink.error("E0220", f"enum value `{value}` appears twice", node.span,
                                    help="list each value once")
                    ok = False
                seen.add(value)
                try:
                    values.check_string(value, "enum value")
                except InvalidValue as err:
                    self.sink.error("E0314", f"invalid enum value: {err.message}", node.span)
                    ok = False
            return EnumT(tuple(dict.fromkeys(node.values))) if ok else None
        if isinstance(node, ast.ListType):
            if isinstance(node.elem, ast.OptType):
                self.sink.error("E0317", "a list element cannot be optional", node.elem.span,
                                help="make the list optional instead: `list[T]?`")
                return None
            elem = self._lower_type(node.elem)
            return None if elem is None else ListT(elem)
        assert isinstance(node, ast.OptType)  # only reachable inside a list, reported above
        return None

    def lower_tools(self) -> dict[str, ir.Tool]:
        tools: dict[str, ir.Tool] = {}
        first: dict[str, Span | None] = {}
        for decl in self.of(ast.ToolDecl):
            name = decl.name.value
            if name in first:
                self.sink.error("E0205", f"tool `{name}` is declared more than once", decl.name.span,
                                notes=[f"first declared at {at(first[name])}"],
                                help="declare each tool once, with all its parameters")
                continue
            first[name] = decl.name.span
            tools[name] = self._lower_tool(decl)
        return tools

    def _lower_tool(self, decl: ast.ToolDecl) -> ir.Tool:
        """The tool; an invalid part is reported and left out, but the tool stays declared
        so that rules naming it are still checked."""
        params = []
        seen: dict[str, Span | None] = {}
        for p in decl.params:
            pname = p.name.value
            if pname in seen:
                self.sink.error("E0206", f"parameter `{pname}` of tool `{decl.name.value}` is declared twice",
                                p.name.span, notes=[f"first declared at {at(seen[pname])}"])
                continue
            seen[pname] = p.name.span
            params.append(self._lower_param(p))
        output = self._lower_returns(decl.returns) or ir.Output(none=True)
        wrap = self._lower_wraps(decl, params) if decl.wraps is not None else None
        return ir.Tool(name=decl.name.value, params=tuple(params), output=output,
                       effects=tuple(dict.fromkeys(e.value for e in decl.effects)), wraps=wrap, span=decl.span)

    def _lower_param(self, p: ast.ParamDecl) -> ir.ParamSpec:
        """The param; its type is ERROR when invalid (kept so that its uses are not reported again)."""
        node = p.type
        optional = isinstance(node, ast.OptType)
        t = self._lower_type(node.inner if optional else node)
        if t is None:
            t = ERROR
        default = None
        if p.default is not None and t is not ERROR:
            default = self._lower_default(p, t)
        return ir.ParamSpec(name=p.name.value, type=t, optional=optional or p.default is not None,
                            has_default=p.default is not None, default=default, sensitive=p.sensitive,
                            span=p.span)

    def _lower_default(self, p: ast.ParamDecl, t: Any) -> Any:
        _, value = validate_literal(p.default, t, f"the default of `{p.name.value}`", "E0314", self.sink)
        return value

    def _lower_returns(self, r: ast.Returns | None) -> ir.Output | None:
        if r is None:  # R2: unknown classification is the top label, untrusted
            return ir.Output(none=False, level=max(len(self.labels) - 1, 0), untrusted=True, declared=False)
        if r.none:
            return ir.Output(none=True)
        ok = True
        levels = {n: i for i, n in enumerate(self.labels)}
        level = levels.get(r.level.value)
        if level is None:
            ok = False
            if not self.labels:
                help = f"no labels are declared; declare them, bottom first: `labels public < {r.level.value}`"
            else:
                help = did_you_mean(r.level.value, self.labels) or f"declared labels: {quoted(self.labels)}"
            self.sink.error("E0216", f"unknown label `{r.level.value}`", r.level.span, help=help)
        for tag in r.tags:
            if tag.value not in self.tags:
                ok = False
                self.sink.error("E0217", f"unknown tag `{tag.value}`", tag.span,
                                help=(did_you_mean(tag.value, self.tags) or f"declared tags: {quoted(self.tags)}")
                                if self.tags else "no tags are declared; declare them with `tags NAME, ...`")
        if not ok:
            return None
        return ir.Output(none=False, level=level, untrusted=r.untrusted,
                         tags=tuple(dict.fromkeys(t.value for t in r.tags)))

    def _lower_wraps(self, decl: ast.ToolDecl, params: list[ir.ParamSpec]) -> ir.Wrap | None:
        by_name = {p.name: p for p in params}
        w = decl.wraps

        def param_of(node: ast.Expr, role: str, ok: Callable[[Any], bool], want: str) -> str | None:
            if not (isinstance(node, ast.PathRef) and len(node.parts) == 2 and node.parts[0] == "params"):
                self.sink.error("E0319", f"`wraps` needs a parameter for the {role}", node.span,
                                help="write `wraps params.NAME with params.ARGS`")
                return None
            spec = by_name.get(node.parts[1])
            if spec is None:
                self.sink.error("E0214", f"unknown parameter `{node.parts[1]}` of tool `{decl.name.value}`",
                                node.span, help=f"parameters of `{decl.name.value}`: {quoted(by_name)}"
                                if by_name else f"`{decl.name.value}` has no parameters")
                return None
            if spec.type is ERROR:
                return None
            if not ok(spec.type):
                self.sink.error("E0319", f"the {role} parameter `{spec.name}` is `{show(spec.type)}`, not {want}",
                                node.span)
                return None
            if spec.may_be_absent:
                self.sink.error("E0319", f"the {role} parameter `{spec.name}` may be absent", node.span,
                                help="the runtime needs it to resolve the wrapped call; make it required")
                return None
            return spec.name

        name = param_of(w.name, "wrapped tool name", lambda t: t == STR or isinstance(t, EnumT), "`str`")
        args = param_of(w.args, "wrapped arguments", lambda t: t == JSON, "`json`")
        if name is None or args is None:
            return None
        return ir.Wrap(name_param=name, args_param=args)

    # ---- rules ---------------------------------------------------------------------

    def lower_rules(self) -> tuple[ir.Rule, ...]:
        out = []
        first: dict[str, Span | None] = {}
        for decl in self.of(ast.RuleDecl):
            if decl.id in first:
                self.sink.error("E0207", f"rule id `{decl.id}` is used more than once", decl.id_span,
                                notes=[f"first used at {at(first[decl.id])}"],
                                help="rule ids name rules in decisions and receipts; make them unique")
            else:
                first[decl.id] = decl.id_span
            out.append(self._lower_rule(decl, index=len(out)))
        return tuple(out)

    def _lower_rule(self, decl: ast.RuleDecl, index: int) -> ir.Rule:
        effect = decl.effect
        priority = self._priority(decl)
        self._check_effect_args(decl)
        tools = expand_selector(decl.selector, self.scope, self.sink, decided=True)
        args = decl.args

        def check(tool: ir.Tool, sink: Sink):
            checker = TypeChecker(self.scope, sink)
            cond = (checker.check_condition(decl.condition, tool, forbid=effect == "forbid")
                    if decl.condition is not None else None)
            assigns = (checker.check_modify(args, tool)
                       if effect == "modify" and isinstance(args, ast.ModifyArgs) else ())
            return cond, assigns

        cond, assigns = self._per_tool(f"rule `{decl.id}`", tools, check, decl.condition, (None, ()))
        approvers: tuple[str, ...] = ()
        timeout = None
        if effect == "step_up" and isinstance(args, ast.StepUpArgs):
            approvers = tuple(dict.fromkeys(args.approvers))
            timeout = args.timeout.seconds
        elif effect == "defer" and isinstance(args, ast.DeferArgs):
            timeout = args.timeout.seconds
        return ir.Rule(id=decl.id, effect=effect, priority=priority, tools=tools, condition=cond,
                       assignments=assigns, approvers=approvers, timeout_s=timeout, because=decl.because,
                       index=index, explicit_priority=decl.priority is not None and effect != "forbid",
                       span=decl.span)

    def _priority(self, decl: ast.RuleDecl) -> int:
        if decl.effect == "forbid":
            if decl.priority is not None:
                self.sink.error("E0402", f"`forbid` rule `{decl.id}` cannot have a priority", decl.priority_span,
                                help="forbid rules are checked before every other rule; remove `priority`")
            return -1
        if decl.priority is None:
            return ir.DEFAULT_PRIORITY[decl.effect]
        lo, hi = PRIORITY_RANGE
        if not lo <= decl.priority <= hi:
            self.sink.error("E0401", f"priority `{decl.priority}` is out of range", decl.priority_span,
                            help=f"priorities are {lo}–{hi}; defaults: " +
                                 ", ".join(f"{e} {p}" for e, p in ir.DEFAULT_PRIORITY.items()))
            return ir.DEFAULT_PRIORITY[decl.effect]
        return decl.priority

    def _check_effect_args(self, decl: ast.RuleDecl) -> None:
        effect, args = decl.effect, decl.args
        wanted = {"modify": ast.ModifyArgs, "step_up": ast.StepUpArgs, "defer": ast.DeferArgs}.get(effect)
        span = args.span if args is not None else decl.span
        if effect == "step_up" and isinstance(args, ast.DeferArgs):
            self.sink.error("E0406", f"`step_up` rule `{decl.id}` needs `approvers [...]`", span,
                            help='write `approvers ["team"] timeout 15m`; the timeout resolves to DENY')
            return
        if args is not None and not isinstance(args, wanted or ()):
            clause = {ast.ModifyArgs: "`set` and `redact`", ast.StepUpArgs: "`approvers`",
                      ast.DeferArgs: "`timeout`"}[type(args)]
            owner = _ARG_EFFECT[type(args)]
            self.sink.error("E0405", f"{clause} cannot follow a `{effect}` rule", span,
                            help=f"{clause} belong{'s' if owner != 'modify' else ''} to `{owner}` rules")
            return
        if args is None and wanted is not None:
            needs = {"modify": "`set NAME = VALUE` or `redact NAME`",
                     "step_up": "`approvers [...]` and `timeout D`", "defer": "`timeout D`"}[effect]
            help = {"modify": "a modify without assignments is an allow; use `allow`",
                    "step_up": "a timeout resolves to DENY",
                    "defer": "a timeout resolves to DENY: DEFER is never a soft allow"}[effect]
            self.sink.error("E0406", f"`{effect}` rule `{decl.id}` needs {needs}", decl.span, help=help)
            return
        if isinstance(args, ast.StepUpArgs) and not args.approvers:
            self.sink.error("E0407", f"`step_up` rule `{decl.id}` has no approvers", args.span,
                            help="a step-up nobody can approve always times out to DENY; name an approver, "
                                 "or use `deny`")

    def _per_tool(self, what: str, tools: tuple[str, ...], check, cond_node, empty):
        """Run `check(tool, sink)` for every selected tool; report each distinct problem once.

        A problem found for some tools only notes which; the lowered results must
        agree across tools, since the IR holds one condition per rule.
        """
        if not tools:
            return empty
        groups: dict[tuple, tuple[Diagnostic, list[str]]] = {}
        results = []
        failed = False
        for name in tools:
            sub = Sink()
            results.append((name, check(self.scope.tools[name], sub)))
            failed = failed or sub.failed
            for d in sub.items:
                key = (d.code, d.severity, d.message, d.span, d.help, d.notes)
                groups.setdefault(key, (d, []))[1].append(name)
        for d, names in groups.values():
            if len(names) == 1:
                note = f"while checking {what} for tool `{names[0]}`"
            elif len(names) == len(tools):
                note = f"while checking {what} for each tool it selects ({quoted(names, limit=4)})"
            else:
                note = f"while checking {what} for tools {quoted(names, limit=4)}"
            self.sink.items.append(attrs.evolve(d, notes=d.notes + (note,)))
        first_name, first = results[0]
        if not failed:
            for name, other in results[1:]:
                if other != first:
                    span = cond_node.span if cond_node is not None else None
                    self.sink.error("E0318", f"{what} means different things for tools `{first_name}` and `{name}`",
                                    span, help="a string literal compared with an `email`, `url` or `path` is read "
                                               "as one, and a value's type depends on the tool; split the rule per tool")
                    break
        return first

    # ---- asserts -------------------------------------------------------------------

    def lower_asserts(self) -> tuple[ir.Assert, ...]:
        out = []
        first: dict[str, Span | None] = {}
        for decl in self.of(ast.AssertDecl):
            if decl.name in first:
                self.sink.error("E0208", f"assert `{decl.name}` is declared more than once", decl.span,
                                notes=[f"first declared at {at(first[decl.name])}"],
                                help="assert names identify findings; make them unique")
            else:
                first[decl.name] = decl.span
            seen = []
            for word in decl.decisions:
                if word in seen:
                    self.sink.error("E0501", f"decision `{word}` is listed twice in assert `{decl.name}`", decl.span,
                                    help="list each decision once")
                else:
                    seen.append(word)
            tools = expand_selector(decl.selector, self.scope, self.sink, decided=True)

            def check(tool: ir.Tool, sink: Sink, decl=decl):
                return TypeChecker(self.scope, sink).check_condition(decl.condition, tool)

            cond = (self._per_tool(f"assert `{decl.name}`", tools, check, decl.condition, None)
                    if decl.condition is not None else None)
            out.append(ir.Assert(name=decl.name, kind=decl.kind, decisions=tuple(seen), tools=tools,
                                 condition=cond, span=decl.span))
        return tuple(out)
