"""Write a compiled policy artifact: payload, translation validation, signature.

`compile_policy` runs the whole of `aarmc compile` after the checks: build the
decision table, encode the payload (`aarm_runtime.artifact`, format 1),
decode those very bytes back with the runtime's own decoder, prove per tool
with Z3 that the decoded table decides exactly as the source IR
(`aarmc.compile.validate`), and only then sign. The payload states that it
was proved (key 13); an unproved table is never signed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
from aarm_runtime import artifact as fmt
from aarm_runtime import dcbor, keys

import aarmc
from aarmc.compile.table import DecisionTable, build_table
from aarmc.semantics import ir

_SHA256 = -16


@attrs.frozen(kw_only=True)
class CompileResult:
    """A signed artifact and what was proved about it."""

    data: bytes  # the artifact file's bytes (COSE_Sign1, or the bare payload when unsigned)
    payload: bytes
    table: DecisionTable
    validation: Any  # aarmc.compile.validate.ValidationReport | None
    signed: bool

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def issued_at_now() -> int:
    """Seconds since the epoch, or `SOURCE_DATE_EPOCH` when set (reproducible builds)."""
    fixed = os.environ.get("SOURCE_DATE_EPOCH")
    if fixed is not None and fixed.strip().isdigit():
        return int(fixed.strip())
    return int(time.time())


def encode_payload(policy: ir.Policy, table: DecisionTable, *, check_report_digest: bytes | None,
                   validation: dict | None) -> bytes:
    """The deterministic CBOR payload of a policy's artifact."""
    if check_report_digest is not None and len(check_report_digest) != 32:
        raise ValueError("the check report digest must be a 32-byte sha-256")
    doc = {
        fmt.K_FORMAT: fmt.FORMAT_VERSION,
        fmt.K_POLICY: policy.name,
        fmt.K_VERSION: policy.version,
        fmt.K_SOURCES: [[s.file, [_SHA256, bytes.fromhex(s.sha256)]] for s in policy.sources],
        fmt.K_DEFAULT: policy.default,
        fmt.K_LABELS: list(policy.labels),
        fmt.K_TAGS: list(policy.tags),
        fmt.K_CONSTS: [[name, fmt.encode_value(value)] for name, value in policy.consts],
        fmt.K_ENV: [[e.name, fmt.encode_type(e.type)] for e in policy.env],
        fmt.K_NODES: list(table.nodes),
        fmt.K_RULES: list(table.rules),
        fmt.K_TOOLS: list(table.tools),
        fmt.K_CHECK: None if check_report_digest is None else [_SHA256, check_report_digest],
        fmt.K_VALIDATION: validation,
        fmt.K_COMPILER: f"aarmc {aarmc.__version__}",
    }
    return dcbor.encode(doc)


def compile_policy(
    policy: ir.Policy,
    key: keys.SigningKey | None,
    *,
    check_report_digest: bytes | None = None,
    issued_at: int | None = None,
    validate: bool = True,
    timeout_ms: int = 60_000,
) -> CompileResult:
    """Compile, prove and sign; raise `TranslationValidationError` if any tool's table is not proved.

    `key=None` writes an unsigned artifact (the bare payload), which the
    runtime loads only with ``unsafe_unsigned=True``. `validate=False` skips
    the proof (and the artifact then says it was not proved).
    """
    table = build_table(policy)
    report = None
    claim = None
    if validate:
        from aarmc.compile.validate import validate_payload

        # The proof is about these bytes, decoded by the runtime's own reader.
        proved_payload = encode_payload(policy, table, check_report_digest=check_report_digest, validation=None)
        report = validate_payload(policy, proved_payload, timeout_ms=timeout_ms)
        report.raise_for_failure()
        claim = report.claim()
    payload = encode_payload(policy, table, check_report_digest=check_report_digest, validation=claim)
    if validate:
        # The signed payload differs from the proved one only in the claim (key 13).
        if _without_claim(payload) != proved_payload:
            raise AssertionError("the signed payload's tables differ from the proved ones")
    if key is None:
        return CompileResult(data=payload, payload=payload, table=table, validation=report, signed=False)
    data = fmt.sign_payload(payload, key, policy=policy.name,
                            issued_at=issued_at if issued_at is not None else issued_at_now())
    return CompileResult(data=data, payload=payload, table=table, validation=report, signed=True)


def _without_claim(payload: bytes) -> bytes:
    doc = dcbor.decode_strict(payload)
    doc[fmt.K_VALIDATION] = None
    return dcbor.encode(doc)


def write_artifact(path: str | os.PathLike[str], data: bytes) -> None:
    """Write the artifact atomically: a reader sees the old file or the new one, never half of one."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or Path("."))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
