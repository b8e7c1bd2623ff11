"""Which tools a client may see: those the policy could ever decide other than DENY.

Read from the artifact's decision tables, never by evaluating anything. A
tool is hidden only when DENY is certain for every action and every
context; whenever that is not certain from the table's shape the tool stays
visible, because the decision is made again at call time anyway. Hiding is
a convenience for the agent (it does not plan with tools it can never use),
not the enforcement.

DENY is certain when (LANGUAGE.md §5):

- the tool is not declared (step 1: unknown tool);
- a forbid rule has no condition (step 2 matches every action);
- walking the priority groups from the highest down, every rule met so far
  is a deny and a group holds a deny with no condition: that group always
  has a true rule, so no lower rule decides, and a group of deny rules only
  can neither conflict nor defer (step 4); unknowns change nothing since
  every assignment gives DENY (step 5);
- every rule is a deny and the default posture is deny.

A meta-tool (one whose params name another tool) is decided as the tool it
wraps, which the arguments choose at call time: it stays visible.
"""

from __future__ import annotations

from collections.abc import Iterable

from aarm_runtime import artifact as fmt


def _unconditional(art: fmt.Artifact, rule: fmt.RuleEntry) -> bool:
    if rule.condition is None:
        return True
    node = art.nodes[rule.condition]
    return node[0] == fmt.LIT and node[1] is True


def may_not_deny(art: fmt.Artifact, tool: str) -> bool:
    """False only when the policy decides DENY for every call of `tool`, whatever the params and context.

    >>> # visible = [t for t in upstream_tools if may_not_deny(engine.artifact, t)]
    """
    entry = art.tool(tool)
    if entry is None:
        return False
    if entry.wraps is not None:
        return True
    if any(_unconditional(art, art.rules[i]) for i in entry.forbid.rules):
        return False
    for group in entry.groups:
        rules = [art.rules[i] for i in group.rules]
        if any(r.effect != "deny" for r in rules):
            return True
        if any(_unconditional(art, r) for r in rules):
            return False
    return art.default != "deny"


def visible_tools(art: fmt.Artifact, names: Iterable[str]) -> frozenset[str]:
    """The policy tool names among `names` that a client may see."""
    return frozenset(n for n in names if may_not_deny(art, n))
