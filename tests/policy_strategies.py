"""Hypothesis strategies for well-typed policies, actions and sessions (differential tests).

`policies()` draws policy *text* over one fixed set of declarations and a
vocabulary of condition atoms that each type-check, so every drawn policy
loads; rules combine atoms with and / or / not, pick effects, priorities and
arguments, and may select several tools (`effects external`, `m.*`, `any`)
with context-only conditions. `actions()` and `sessions()` draw LANGUAGE.md §7
JSON over pools that make the atoms go both ways: recipients inside and
outside the const domains, values that do and do not occur in outputs and
in the intent, absent and present context sections, and now and then an
invalid value (a wrong type, a risk outside [0, 1], an unknown tool, a `..`
path), so every reason of §5 is reached.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

HEADER = """policy "gen" version "1"
default {default}
labels low < mid < high
tags pii, fin
env flag: bool
env region: str
env limit: int
const doms = {{"corp.example", "x.test"}}
const words = ["aaa", "bbb"]
tool m.read(folder: str = "in") returns high untrusted tagged pii
tool m.web(url: url) returns low untrusted
tool m.quiet() returns none
tool m.notes(id: str)
tool m.send(to: email, cc: list[email] = [], n: int, amount: decimal, k: enum("x", "y"), s: str, o: int?, p: path = "/data/x", flag: bool = false) returns none effects external
tool m.pay(to: email, amount: decimal, memo: str?) returns mid tagged fin effects external, write
tool mcp.invoke(name: str, args: json) wraps params.name with params.args
"""

# Atoms that read only the params of m.send (forbid rules may use these).
SEND_PARAM_ATOMS = [
    "params.n > {c}", "params.n == {c}", "params.n <= {c}", "params.n != {c}",
    "params.amount > 1.5", "params.amount <= {c}",
    'params.k == "x"', 'params.k != "y"',
    'params.s == "aaa"', 'params.s in {{"aaa", "bbb"}}', "params.s in words", 'params.s startswith "a"',
    "params.s matches /b+/", 'params.s endswith "b"', 'params.s contains "ab"', "len(params.s) > {c}",
    "params.s matches /^a.*b$/i",
    'params.to.domain == "corp.example"', "params.to.domain in doms", "params.to.domain not in doms",
    'params.to.local == "bob"',
    "any c in params.cc: c.domain not in doms", "all c in params.cc: c.domain in doms", "len(params.cc) >= 1",
    "has params.o and params.o > {c}", "not (has params.o) or params.o == {c}",
    'params.p == "/data/x"', 'params.p in {{"/data/a", "/tmp/b"}}', "params.flag", "not params.flag",
    'params.to == "bob@corp.example"', 'params.to in {{"ann@x.test", "Bob@corp.example"}}',
]
# Atoms of m.send that read context (never in a forbid).
SEND_CONTEXT_ATOMS = [
    "env.limit > params.n", "params.to from user", "params.to from untrusted", "params.s from m.read",
    "params.s from untrusted", "any c in params.cc: c from user", "params.s from user",
    "not (params.to from user)", "params.to.domain == env.region",
]
CONTEXT_ATOMS = [
    "env.flag", "not env.flag", "has env.flag", 'env.region == "eu"', "env.limit > {c}",
    "risk.injection > 0.5", "has risk.drift", "risk.drift <= 0.3",
    "intent.score > 0.7", '"m.send" in intent.tools', "has intent",
    'identity.role == "admin"', "identity.delegated", '"mail" in identity.scopes',
    '"pii" in session.tags', "session.level >= high", "session.level < mid",
    "session.count(m.read) >= 2", "session.count(m.read within 1h) >= 1", "session.count(m.read, m.web) >= {c}",
    "session.used(m.web)", "session.actions >= 2",
]
PAY_ATOMS = [
    "params.amount > 1000", "params.amount <= {c}", "params.to.domain in doms", "params.to from user",
    "has params.memo and params.memo contains \"rent\"", "params.to from m.read",
]


@st.composite
def conditions(draw: Any, atoms: list[str], depth: int = 0) -> str:
    if depth >= 2 or draw(st.integers(0, 2)) == 0:
        return draw(st.sampled_from(atoms)).format(c=draw(st.integers(0, 3)))
    kind = draw(st.sampled_from(["and", "or", "not", "and"]))
    if kind == "not":
        return f"not ({draw(conditions(atoms, depth + 1))})"
    a, b = draw(conditions(atoms, depth + 1)), draw(conditions(atoms, depth + 1))
    return f"({a}) {kind} ({b})"


_PRIORITIES = st.sampled_from(["", "", " priority 100", " priority 150", " priority 200", " priority 300"])
_MODIFY_ARGS = [" set n = {c}", ' set s = "bbb"', ' set n = {c}, s = "aaa"', " redact s", " set amount = 2.5",
                " set s = env.region", " set cc = []", " set n = params.n", " set k = \"y\""]


@st.composite
def rule(draw: Any, i: int) -> str:
    effect = draw(st.sampled_from(["forbid", "deny", "allow", "allow", "modify", "step_up", "defer"]))
    target = draw(st.sampled_from(["send", "send", "send", "pay", "multi"]))
    if effect == "modify":
        target = "send"
    if target == "send":
        selector = "m.send"
        atoms = SEND_PARAM_ATOMS if effect == "forbid" else SEND_PARAM_ATOMS + SEND_CONTEXT_ATOMS + CONTEXT_ATOMS
    elif target == "pay":
        selector = "m.pay"
        atoms = PAY_ATOMS if effect != "forbid" else ["params.amount > 1000", "params.amount <= {c}",
                                                      "params.to.domain in doms"]
    else:
        selector = draw(st.sampled_from(["effects external", "m.*", "any", "m.send, m.pay"]))
        atoms = CONTEXT_ATOMS if effect != "forbid" else []
    prio = "" if effect == "forbid" else draw(_PRIORITIES)
    cond = draw(st.one_of(st.none(), conditions(atoms))) if atoms else None
    when = f" when {cond}" if cond else ""
    args = ""
    if effect == "modify":
        args = draw(st.sampled_from(_MODIFY_ARGS)).format(c=draw(st.integers(0, 3)))
    elif effect == "step_up":
        approvers = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=2, unique=True))
        listed = ", ".join(f'"{a}"' for a in approvers)
        args = f" approvers [{listed}] timeout {draw(st.sampled_from(['5m', '10m', '1h']))}"
    elif effect == "defer":
        args = f" timeout {draw(st.sampled_from(['5m', '10m']))}"
    because = draw(st.sampled_from(["", "", f' because "reason {i}"']))
    return f'{effect} "r{i}"{prio} {selector}{when}{args}{because}'


@st.composite
def policies(draw: Any, max_rules: int = 6) -> str:
    lines = [HEADER.format(default=draw(st.sampled_from(["deny", "allow"])))]
    n = draw(st.integers(1, max_rules))
    for i in range(n):
        lines.append(draw(rule(i)))
    return "\n".join(lines) + "\n"


# ---- actions ---------------------------------------------------------------------------------

EMAILS = ["bob@corp.example", "Eve@Evil.example", "ann@x.test", "bob@Corp.Example", "carl@partner.example"]
STRINGS = ["aaa", "bbb", "abb", "zzz", "ab", "rent due", "eu", "abab"]


@st.composite
def send_params(draw: Any) -> dict:
    p: dict[str, Any] = {
        "to": draw(st.sampled_from(EMAILS)),
        "n": draw(st.integers(-2, 5)),
        "amount": draw(st.sampled_from([0, 1, Decimal("1.5"), Decimal("2.50"), 3, 1001])),
        "k": draw(st.sampled_from(["x", "y"])),
        "s": draw(st.sampled_from(STRINGS)),
    }
    if draw(st.booleans()):
        p["cc"] = draw(st.lists(st.sampled_from(EMAILS), max_size=3))
    if draw(st.booleans()):
        p["o"] = draw(st.integers(0, 4))
    if draw(st.integers(0, 3)) == 0:
        p["p"] = draw(st.sampled_from(["/data/a", "/tmp/b", "data//c/./d", "/data/../etc"]))
    if draw(st.integers(0, 3)) == 0:
        p["flag"] = draw(st.booleans())
    # Now and then something invalid: a wrong type, a missing or an unknown param.
    broken = draw(st.integers(0, 24))
    if broken == 0:
        p["n"] = "3"
    elif broken == 1:
        del p["to"]
    elif broken == 2:
        p["extra"] = 1
    elif broken == 3:
        p["k"] = "z"
    elif broken == 4:
        p["amount"] = True
    elif broken == 5:
        p["o"] = None
    return p


@st.composite
def pay_params(draw: Any) -> dict:
    p: dict[str, Any] = {"to": draw(st.sampled_from(EMAILS)),
                         "amount": draw(st.sampled_from([5, Decimal("999.99"), 1000, 1500, Decimal("0.01")]))}
    if draw(st.booleans()):
        p["memo"] = draw(st.sampled_from(["rent", "rent for may", "gift"]))
    return p


@st.composite
def actions(draw: Any) -> dict:
    kind = draw(st.sampled_from(["send", "send", "send", "pay", "pay", "read", "quiet", "unknown", "wrapped"]))
    if kind == "send":
        return {"tool": "m.send", "params": draw(send_params())}
    if kind == "pay":
        return {"tool": "m.pay", "params": draw(pay_params())}
    if kind == "read":
        return {"tool": "m.read", "params": draw(st.sampled_from([{}, {"folder": "x"}]))}
    if kind == "quiet":
        return {"tool": "m.quiet"}
    if kind == "unknown":
        return {"tool": draw(st.sampled_from(["m.nope", "x.y"])), "params": {}}
    inner = draw(st.sampled_from(["m.send", "m.pay", "m.nope", "mcp.invoke"]))
    args: Any = draw(send_params()) if inner == "m.send" else draw(pay_params())
    if inner == "mcp.invoke":
        args = {"name": "m.pay", "args": draw(pay_params())}
    if draw(st.integers(0, 8)) == 0:
        args = "not an object"
    return {"tool": "mcp.invoke", "params": {"name": inner, "args": args}}


# ---- sessions ---------------------------------------------------------------------------------

OUTPUTS = ["mail from bob@corp.example: aaa", "see Eve@evil.example now", "abb and zzz", "nothing here",
           "{\"k\": \"bbb\"}", "rent due"]


@st.composite
def history_entries(draw: Any) -> dict:
    e: dict[str, Any] = {"tool": draw(st.sampled_from(["m.read", "m.web", "m.quiet", "m.notes", "m.pay",
                                                       "x.undeclared"]))}
    if draw(st.booleans()):
        e["output"] = draw(st.one_of(st.sampled_from(OUTPUTS), st.just({"to": "ann@x.test", "n": 2})))
    if draw(st.integers(0, 3)) > 0:
        e["time"] = draw(st.sampled_from(["2026-11-26T09:00:00Z", "2026-11-26T09:30:00Z", "2026-11-26T08:59:59Z",
                                          "2026-11-26T10:00:00Z", "2026-11-26T09:00:00.5+00:00"]))
    return e


@st.composite
def sessions(draw: Any) -> dict | None:
    if draw(st.integers(0, 6)) == 0:
        return None
    s: dict[str, Any] = {}
    if draw(st.booleans()):
        ident: dict[str, Any] = {}
        if draw(st.booleans()):
            ident["role"] = draw(st.sampled_from(["admin", "user"]))
        if draw(st.booleans()):
            ident["scopes"] = draw(st.lists(st.sampled_from(["mail", "pay"]), max_size=2))
        if draw(st.booleans()):
            ident["delegation"] = draw(st.sampled_from([[], [{"from": "a", "to": "b"}]]))
        if draw(st.integers(0, 20)) == 0:
            ident["role"] = 7  # invalid: DENY invalid-params
        s["identity"] = ident
    if draw(st.booleans()):
        intent: dict[str, Any] = {}
        if draw(st.booleans()):
            intent["text"] = draw(st.sampled_from(["send aaa to bob@corp.example", "pay ann@x.test the rent",
                                                   "nothing", "about abb"]))
        if draw(st.booleans()):
            intent["entities"] = draw(st.lists(st.sampled_from(EMAILS + STRINGS), max_size=3))
        if draw(st.booleans()):
            intent["tools"] = draw(st.lists(st.sampled_from(["m.send", "m.pay"]), max_size=2))
        if draw(st.booleans()):
            intent["score"] = draw(st.sampled_from([0, Decimal("0.5"), Decimal("0.9"), 1]))
        s["intent"] = intent
    if draw(st.booleans()):
        env: dict[str, Any] = {}
        if draw(st.booleans()):
            env["flag"] = draw(st.booleans())
        if draw(st.booleans()):
            env["region"] = draw(st.sampled_from(["eu", "corp.example", "us"]))
        if draw(st.booleans()):
            env["limit"] = draw(st.integers(-1, 5))
        if draw(st.integers(0, 20)) == 0:
            env["flag"] = "yes"  # invalid
        if draw(st.integers(0, 4)) == 0:
            env["undeclared"] = 1  # ignored
        s["env"] = env
    if draw(st.booleans()):
        risk: dict[str, Any] = {}
        for key in ("injection", "drift", "confidence"):
            if draw(st.booleans()):
                risk[key] = draw(st.sampled_from([0, Decimal("0.3"), Decimal("0.6"), 1]))
        if draw(st.integers(0, 20)) == 0:
            risk["injection"] = Decimal("1.5")  # invalid
        s["risk"] = risk
    if draw(st.booleans()):
        s["now"] = "2026-11-26T10:00:00Z"
    if draw(st.booleans()):
        s["history"] = draw(st.lists(history_entries(), max_size=4))
    return s


@st.composite
def unknown_heavy_policies(draw: Any) -> str:
    """Many rules on one tool that read context: exercises R3a (step 5) and modify composition."""
    lines = [HEADER.format(default=draw(st.sampled_from(["deny", "allow"])))]
    atoms = CONTEXT_ATOMS + ["params.to from user", "params.s from untrusted", "env.limit > params.n"]
    for i in range(draw(st.integers(2, 9))):
        effect = draw(st.sampled_from(["deny", "allow", "modify", "step_up", "defer"]))
        prio = draw(st.sampled_from(["", " priority 100", " priority 200", " priority 300"]))
        args = ""
        if effect == "modify":
            args = draw(st.sampled_from([" set n = 1", " set s = env.region", ' set s = "q"', " set n = 2"]))
        elif effect == "step_up":
            args = f' approvers ["{draw(st.sampled_from("abc"))}"] timeout {draw(st.sampled_from(["5m", "10m"]))}'
        elif effect == "defer":
            args = f" timeout {draw(st.sampled_from(['5m', '10m']))}"
        lines.append(f'{effect} "r{i}"{prio} m.send when {draw(conditions(atoms))}{args}')
    return "\n".join(lines) + "\n"


send_actions = send_params().map(lambda p: {"tool": "m.send", "params": p})
