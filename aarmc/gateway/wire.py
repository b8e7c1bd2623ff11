"""Arguments between MCP's JSON and the runtime's exact values.

The MCP SDK parses JSON numbers into floats; the runtime refuses floats
(decimals must be exact). The gateway writes the arguments back to JSON text
(Python writes a float as the shortest text that reads back as the same
float, which is the value the server will receive) and reads that text with
`aarm_runtime.values.load_json`, which also enforces the runtime's limits
(no NaN or Infinity, bounded nesting and number length). The byte length of
that text is the size the gateway limits.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from aarm_runtime import values


class BadArguments(ValueError):
    """Arguments the gateway refuses before any decision: too large, not JSON the runtime accepts."""


def exact_arguments(args: Mapping[str, Any], limit: int) -> dict[str, Any]:
    """The arguments as the runtime reads JSON (decimals exact); `BadArguments` past `limit` bytes.

    >>> exact_arguments({"amount": 0.1, "n": 3}, 1000)
    {'amount': Decimal('0.1'), 'n': 3}
    """
    try:
        text = json.dumps(dict(args), allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except ValueError:
        raise BadArguments("arguments must not contain NaN or Infinity") from None
    except (TypeError, RecursionError):
        raise BadArguments("arguments are not JSON") from None
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise BadArguments(f"arguments are {size} bytes; the gateway accepts at most {limit}")
    try:
        return values.load_json(text)
    except values.JsonError as err:
        raise BadArguments(f"arguments: {err}") from None


def number(value: Decimal) -> int | float:
    """A decimal as a JSON number: an int when integral, else the nearest float (JSON has nothing else)."""
    if value == value.to_integral_value():
        return int(value)
    return float(value)


def to_wire(value: Any) -> Any:
    """An exact value (`values.to_json_value` form) as JSON the SDK can send."""
    if isinstance(value, Decimal):
        return number(value)
    if isinstance(value, (list, tuple)):
        return [to_wire(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_wire(v) for k, v in value.items()}
    return value


def typed_to_wire(value: Any, t: Any) -> Any:
    """A decision record's param (decimals written as strings) as JSON the server expects for type `t`."""
    if isinstance(t, values.OptT):
        t = t.inner
    if value is None:
        return None
    if t == values.Prim("decimal") and isinstance(value, str):
        return number(Decimal(value))
    if isinstance(t, values.ListT) and isinstance(value, list):
        return [typed_to_wire(v, t.elem) for v in value]
    return value
