"""Least privilege (AARM R9): a hook that mints one short-lived, narrowly scoped credential per authorised action.

AARM R9 (SHOULD) asks for per-action, minimal, short-lived credentials. The
runtime does not issue credentials itself — that is the job of the
deployment's secrets service (a cloud STS, Vault, an OAuth token exchange) —
but it gives that service the moment and the facts to do it well: a
`Guard` built with ``credentials=mint`` calls ``mint(request)`` with a
`CredentialRequest` for every action it authorised, right before the tool
runs, and hands the result to the tool. The request names exactly one
action — its tool (a meta-tool resolved), its params as they will run (a
MODIFY's), the identity of the session and the decision that allowed it —
so a minter can scope the credential to that one call and let it expire
with the call.

- `Guard.call` / `Guard.acall` then run ``execute(params, credential)``.
- Interceptors that execute themselves (the gateway, the HTTP API) call
  `Guard.mint_credential(session, decision_id)` before they run the tool.
- A minter that raises means the action does not run: `call` records an
  outcome with ``ok=false`` and the error (the tool was never invoked) and
  returns a failed `CallResult`.
- The credential itself never enters a receipt or the context log; the
  context log records that one was minted for the decision (``credential``
  entry: decision id, the credential's type name).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["CredentialError", "CredentialRequest"]


class CredentialError(Exception):
    """No credential could be minted for an action: it must not run."""


@dataclasses.dataclass(frozen=True, slots=True)
class CredentialRequest:
    """The one action a credential is for.

    `tool`: the tool that will run (a meta-tool resolved to the real one; `wrapper` names the meta-tool).
    `params`: the params it will run with. `identity`: the session's LANGUAGE.md §7 identity (principal,
    agent, service, role, scopes), None when unverified. `rules`: the rules that allowed it.
    `expires_at`: the session's expiry (guard clock), None without a TTL — a credential should not
    outlive it.
    """

    session_id: str
    decision_id: str
    action_id: str
    tool: str
    wrapper: str | None
    params: Any
    identity: Mapping[str, Any] | None
    decision: str
    rules: tuple[str, ...]
    expires_at: float | None
