"""`aarmc keygen`, `aarmc compile` and `aarmc inspect`: signed policy artifacts.

Registered on the main `aarmc` group by `aarmc.cli`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import click

from aarmc.cli_common import EXIT_CODES, EXIT_FAILED, EXIT_OK, EXIT_USAGE, _guarded, echo_human, fail, load


@click.command(epilog=EXIT_CODES, short_help="Create an Ed25519 signing key pair for policy artifacts.")
@click.argument("private", metavar="PRIVATE_KEY_FILE")
@click.option("--public", "public", metavar="FILE", help="Where the public key goes (default: PRIVATE.pub).")
@_guarded
def keygen(private: str, public: str | None) -> None:
    """Create PRIVATE_KEY_FILE (a 32-byte Ed25519 seed, mode 0600) and its public key (hex).

    Neither file may exist already. Give the public key to every runtime and
    to `aarmc verify`; keep the private key with the policy authors.
    """
    from aarm_runtime import keys

    public = public or private + ".pub"
    try:
        key = keys.generate_keypair(Path(private), Path(public))
    except (keys.KeyFileError, OSError) as err:
        fail(f"cannot create the key pair: {err}")
    click.echo(f"private key: {private} (mode 0600)\npublic key:  {public}\nkid:         {key.kid.hex()}")


def check_report_digest(report_json: dict) -> bytes:
    """SHA-256 of the canonical JSON of the check report a compiled policy passed."""
    text = json.dumps(report_json, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).digest()


@click.command("compile", epilog=EXIT_CODES, short_help="Compile a policy to a signed, proved decision table.")
@click.argument("policy", metavar="POLICY")
@click.option("-o", "--output", required=True, metavar="FILE", help="The artifact to write (e.g. policy.aarmc).")
@click.option("--key", "key_path", metavar="PRIVATE_KEY_FILE",
              help="Sign with this key (from `aarmc keygen`). Required unless --unsafe-unsigned.")
@click.option("--unsafe-unsigned", is_flag=True,
              help="Write an unsigned artifact (runtimes load it only in their unsafe development mode).")
@click.option("--allow-findings", is_flag=True, help="Compile even when the check reports errors in the analysis.")
@click.option("--timeout-ms", type=click.IntRange(100, 3_600_000), default=60_000, show_default=True,
              help="Solver time limit per tool for translation validation.")
@_guarded
def compile_(policy: str, output: str, key_path: str | None, unsafe_unsigned: bool, allow_findings: bool,
             timeout_ms: int) -> None:
    """Check POLICY, compile it to a decision table, prove the table equal to the
    source (translation validation, Z3) and write it signed to FILE.

    A policy with errors is never compiled; analysis findings at error level
    stop compilation unless --allow-findings.
    """
    from aarm_runtime import keys

    from aarmc import report as rep
    from aarmc.compile import TranslationValidationError, compile_policy, write_artifact

    if key_path is None and not unsafe_unsigned:
        fail("no signing key", help="pass --key PRIVATE_KEY_FILE (create one with `aarmc keygen`), "
                                    "or --unsafe-unsigned for development")
    signing_key = None
    if key_path is not None:
        try:
            signing_key = keys.load_signing_key(Path(key_path))
        except (keys.KeyFileError, keys.InvalidKeyError, OSError) as err:
            fail(f"signing key `{key_path}`: {err}")
    result = load([policy])
    findings = _analysis_findings(result)
    items = tuple(result.diagnostics) + tuple(findings)
    summary = rep.PolicySummary.of(result.policy) if result.policy is not None else None
    report = rep.Report(items=items, sources=result.sources, policy=summary)
    if result.policy is None:
        echo_human(rep.format_human(report), err=True)
        sys.exit(EXIT_USAGE if any(d.code.startswith("AARM-E09") for d in result.diagnostics) else EXIT_FAILED)
    if report.reaches("error") and not allow_findings:
        echo_human(rep.format_human(report), err=True)
        click.echo("error: the check reports errors; fix them or pass --allow-findings", err=True)
        sys.exit(EXIT_FAILED)
    digest = check_report_digest(rep.report_json(report))
    try:
        compiled = compile_policy(result.policy, signing_key, check_report_digest=digest, timeout_ms=timeout_ms)
    except TranslationValidationError as err:
        click.echo(f"error: translation validation failed: {err.report.summary()}", err=True)
        sys.exit(EXIT_FAILED)
    try:
        write_artifact(Path(output), compiled.data)
    except OSError as err:
        fail(f"cannot write `{output}`: {(err.strerror or str(err)).lower()}")
    pol = result.policy
    click.echo(f"compiled policy `{pol.name}` v{pol.version}: {len(pol.tools)} tools, {len(pol.rules)} rules -> "
               f"{output} ({len(compiled.data)} bytes, sha256:{compiled.digest[:16]}…)")
    click.echo(compiled.validation.summary() if compiled.validation is not None else "not validated")
    click.echo("signed with kid " + signing_key.kid.hex() if signing_key is not None
               else "UNSIGNED: runtimes load it only with unsafe_unsigned=True")
    sys.exit(EXIT_OK)


def _analysis_findings(result) -> list:
    """The Z3 analysis findings of a loaded policy, as report items (the same as `aarmc check`)."""
    if result.policy is None:
        return []
    from aarmc.cli import run_analysis  # at call time: aarmc.cli registers this module

    return [f.to_item() for f in run_analysis(result.policy).findings]


@click.command(epilog=EXIT_CODES, short_help="Show what a compiled policy artifact holds.")
@click.argument("artifact", metavar="ARTIFACT")
@click.option("--key", "key_paths", multiple=True, metavar="PUBLIC_KEY_FILE",
              help="Verify the signature with this key (may repeat). Without it the signature is not checked.")
@click.option("--format", "fmt", type=click.Choice(["human", "json"]), default="human", show_default=True)
@_guarded
def inspect(artifact: str, key_paths: tuple[str, ...], fmt: str) -> None:
    """Describe ARTIFACT: policy, sources, tools, decision tables, what was proved, signature."""
    from aarm_runtime.artifact import ArtifactError

    from aarmc.compile.inspect import describe_artifact, render_artifact

    trusted = [_load_public_key(p) for p in key_paths] or None
    try:
        data = Path(artifact).read_bytes()
    except OSError as err:
        fail(f"cannot read `{artifact}`: {(err.strerror or str(err)).lower()}")
    try:
        info = describe_artifact(data, trusted)
    except ArtifactError as err:
        fail(f"`{artifact}` is not a valid policy artifact: {err}")
    if fmt == "json":
        click.echo(json.dumps(info, indent=2, ensure_ascii=False, default=str))
    else:
        click.echo(render_artifact(info))
    sys.exit(EXIT_OK)


def _load_public_key(path: str):
    from aarm_runtime import keys

    try:
        return keys.load_verify_key(Path(path))
    except (keys.KeyFileError, keys.InvalidKeyError, OSError) as err:
        fail(f"public key `{path}`: {err}")
