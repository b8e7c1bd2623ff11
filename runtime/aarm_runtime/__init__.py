"""aarm_runtime: the embeddable AARM runtime (no lark, no z3, no aarmc)."""

__version__ = "0.1.0"
