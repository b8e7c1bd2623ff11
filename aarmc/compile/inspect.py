"""`aarmc inspect`: what a compiled artifact holds, as JSON-able data and as text.

Conditions are shown in the policy language, rebuilt from the expression
program (parenthesised fully: this shows structure, not the author's layout).
Without trusted keys the signature is not checked and the output says so.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any

from aarm_runtime import artifact as fmt
from aarm_runtime import keys, values


def _value(v: Any) -> str:
    if isinstance(v, frozenset):
        return "{" + ", ".join(sorted(_value(x) for x in v)) + "}"
    if isinstance(v, tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (values.Email, values.Url, values.Path)):
        return json.dumps(str(v), ensure_ascii=False)
    return values.canonical_json(v)


def expression_text(nodes: Sequence[tuple], i: int) -> str:
    """The policy-language text of node `i` (fully parenthesised)."""
    node = nodes[i]
    op = node[0]

    def sub(k: int) -> str:
        text = expression_text(nodes, k)
        return f"({text})" if nodes[k][0] in (fmt.AND, fmt.OR, fmt.NOT, fmt.CMP, fmt.MATCH, fmt.FROM, fmt.QUANT) \
            else text

    if op == fmt.LIT:
        return _value(node[1])
    if op == fmt.LABEL:
        return node[1]
    if op == fmt.PARAM:
        return f"params.{node[1]}"
    if op == fmt.VAR:
        return node[1]
    if op == fmt.FIELD:
        return f"{sub(node[1])}.{node[2]}"
    if op == fmt.CTX:
        return f"{node[1]}.{node[2]}" if node[2] else node[1]
    if op == fmt.COUNT:
        within = f" within {node[2]}s" if node[2] is not None else ""
        return f"session.count({', '.join(node[1])}{within})"
    if op == fmt.USED:
        return f"session.used({', '.join(node[1])})"
    if op == fmt.LEN:
        return f"len({expression_text(nodes, node[1])})"
    if op == fmt.HAS:
        return f"has {expression_text(nodes, node[1])}"
    if op == fmt.NOT:
        return f"not {sub(node[1])}"
    if op in (fmt.AND, fmt.OR):
        return f" {'and' if op == fmt.AND else 'or'} ".join(sub(k) for k in node[1])
    if op == fmt.CMP:
        return f"{sub(node[2])} {node[1]} {sub(node[3])}"
    if op == fmt.MATCH:
        return f"{sub(node[1])} matches /{node[2]}/{node[3]}"
    if op == fmt.FROM:
        source = node[2] if node[2] != "tools" else ", ".join(node[3])
        if node[2] == "tools" and len(node[3]) > 1:
            source = f"({source})"
        return f"{sub(node[1])} from {source}"
    return f"{node[1]} {node[2]} in {expression_text(nodes, node[3])}: {expression_text(nodes, node[4])}"


def describe_artifact(data: bytes, trusted_keys: Sequence[keys.VerifyKey] | None = None) -> dict[str, Any]:
    """Everything the artifact states; raises `ArtifactError` if it is refused.

    With `trusted_keys` the signature is verified as `Engine.load` does;
    without, it is decoded unverified (`"signature": "not verified"`).
    """
    art = fmt.load_artifact(data, trusted_keys or (), unsafe_unsigned=not trusted_keys)
    nodes = art.nodes

    def group(g: fmt.Group) -> dict[str, Any]:
        out: dict[str, Any] = {"priority": g.priority, "rules": [art.rules[i].id for i in g.rules]}
        if g.index is not None:
            out["index"] = {"key": expression_text(nodes, g.index.key),
                            "keys": {str(k): [art.rules[i].id for i in v] for k, v in g.index.entries}}
        return out

    envelope = data[:1] == b"\xd2"
    if trusted_keys:
        signature = f"verified (key {art.signer_kid.hex()})"
    else:
        signature = "not verified (no trusted key given)" if envelope else "unsigned"
    return {
        "format": art.format_version,
        "policy": art.policy,
        "version": art.version,
        "signature": signature,
        "issued_at": None if art.issued_at is None else
        datetime.datetime.fromtimestamp(art.issued_at, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "digest": art.digest.hex(),
        "compiler": art.compiler,
        "translation_validation": None if art.validation is None else
        {"solver": art.validation[0], "proved_by_solver": art.validation[1], "proved_by_identity": art.validation[2]},
        "check_report_digest": None if art.check_report_digest is None else art.check_report_digest.hex(),
        "sources": [{"file": f, "sha256": d.hex()} for f, d in art.sources],
        "default": art.default,
        "labels": list(art.labels),
        "tags": list(art.tags),
        "env": {name: values.type_to_text(t) for name, t in art.env},
        "consts": {name: _value(v) for name, v in art.consts},
        "tools": [
            {
                "name": t.name,
                "params": [{"name": p.name,
                            "type": values.type_to_text(p.type) + ("?" if p.optional and not p.has_default else ""),
                            "optional": p.optional,
                            **({"default": _value(p.default)} if p.has_default else {}),
                            **({"sensitive": True} if p.sensitive else {})} for p in t.params],
                "returns": "none" if t.output.none else ("unknown" if not t.output.declared else {
                    "level": art.labels[t.output.level] if art.labels else t.output.level,
                    "untrusted": t.output.untrusted, "tags": list(t.output.tags)}),
                "effects": list(t.effects),
                **({"wraps": {"name": t.wraps[0], "args": t.wraps[1]}} if t.wraps else {}),
                "forbid": group(t.forbid)["rules"],
                "groups": [group(g) for g in t.groups],
            }
            for t in art.tools
        ],
        "rules": [
            {
                "id": r.id, "effect": r.effect, "priority": r.priority,
                "when": None if r.condition is None else expression_text(nodes, r.condition),
                **({"set": {name: expression_text(nodes, n) for name, n in r.assignments}} if r.assignments else {}),
                **({"approvers": list(r.approvers)} if r.effect == "step_up" else {}),
                **({"timeout_s": r.timeout_s} if r.timeout_s is not None else {}),
                **({"because": r.because} if r.because else {}),
                "source": None if r.span is None else f"{r.span[0]}:{r.span[1]}:{r.span[2]}",
            }
            for r in art.rules
        ],
        "program_nodes": len(nodes),
    }


def render_artifact(info: dict[str, Any]) -> str:
    """A human-readable rendering of `describe_artifact`'s result."""
    tv = info["translation_validation"]
    lines = [
        f"policy {info['policy']!r} version {info['version']!r} (artifact format {info['format']})",
        f"  signature: {info['signature']}",
        f"  issued: {info['issued_at'] or '-'}   compiler: {info['compiler']}",
        f"  digest: sha256:{info['digest']}",
        "  translation validation: " + ("none (not proved)" if tv is None else
                                        f"proved by {tv['solver']} for {tv['proved_by_solver']} tool(s)"
                                        + (f", by structural identity for {tv['proved_by_identity']}"
                                           if tv['proved_by_identity'] else "")),
        f"  check report: {('sha256:' + info['check_report_digest']) if info['check_report_digest'] else '-'}",
        f"  default: {info['default']}   labels: {' < '.join(info['labels']) or '-'}   "
        f"tags: {', '.join(info['tags']) or '-'}",
        "  sources:",
        *(f"    {s['file']}  sha256:{s['sha256']}" for s in info["sources"]),
        f"  tools ({len(info['tools'])}):",
    ]
    for t in info["tools"]:
        params = ", ".join(f"{p['name']}: {p['type']}" + (f" = {p['default']}" if "default" in p else "")
                           for p in t["params"])
        lines.append(f"    {t['name']}({params})" + (f" wraps params.{t['wraps']['name']} with params.{t['wraps']['args']}"
                                                      if "wraps" in t else ""))
        if t["forbid"]:
            lines.append(f"      forbid: {', '.join(t['forbid'])}")
        for g in t["groups"]:
            index = f"  [index on {g['index']['key']}: {len(g['index']['keys'])} keys]" if "index" in g else ""
            lines.append(f"      priority {g['priority']}: {', '.join(g['rules'])}{index}")
    lines.append(f"  rules ({len(info['rules'])}, {info['program_nodes']} program nodes):")
    for r in info["rules"]:
        prio = "" if r["effect"] == "forbid" else f" priority {r['priority']}"
        when = f" when {r['when']}" if r["when"] else ""
        lines.append(f"    {r['effect']} {r['id']!r}{prio}{when}   ({r['source'] or '-'})")
    return "\n".join(lines) + "\n"
