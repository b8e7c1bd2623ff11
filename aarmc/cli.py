"""The `aarmc` command line.

Every command body runs under `_guarded`: an unexpected exception becomes
`error[AARM-E0999]: internal error: ...` and exit code 2, never a traceback
(set AARMC_DEBUG=1 to see one). Output is plain text unless stdout is a
terminal, where rich adds colour.
"""

from __future__ import annotations

import difflib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import click

from aarmc import __version__
from aarmc.diagnostics import ERROR, Diagnostic, render_human

from aarmc.cli_common import (  # noqa: F401 - re-exported for the command modules' callers
    CONTEXT,
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_INCONCLUSIVE,
    EXIT_OK,
    EXIT_USAGE,
    _guarded,
    echo_human,
    fail,
    internal_error,
    load,
)


# ---- the front end, behind one function ---------------------------------------------

def _input_error(diags: Sequence[Diagnostic]) -> bool:
    """A file that could not be read or found (E09xx) is a usage error, not a policy error."""
    return any(d.code.startswith("AARM-E09") and d.severity == ERROR for d in diags)


def _read_text(path: str, what: str) -> tuple[str, str]:
    """(display name, text) of an input file; `-` is stdin. Unreadable input exits 2."""
    if path == "-":
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
        display = "<stdin>"
    else:
        display = path
        try:
            data = Path(path).read_bytes()
        except IsADirectoryError:
            fail(f"cannot read {what} `{display}`: it is a directory")
        except OSError as err:
            fail(f"cannot read {what} `{display}`: {(err.strerror or str(err)).lower()}")
    try:
        return display, data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        fail(f"{what} `{display}` is not UTF-8 text: invalid byte 0x{data[err.start]:02x} at offset {err.start}")


def _read_json(path: str, what: str) -> Any:
    from aarm_runtime import values

    display, text = _read_text(path, what)
    try:
        return values.load_json(text)
    except values.JsonError as err:
        fail(f"{what} `{display}`: {err}", help="the file must be one JSON document (LANGUAGE.md §7)")


# ---- commands ---------------------------------------------------------------------

@click.group(context_settings=CONTEXT, epilog=EXIT_CODES)
@click.version_option(__version__, "-V", "--version", prog_name="aarmc", message="%(prog)s %(version)s")
def cli() -> None:
    """aarmc: check, test and run AARM policies for AI-agent tool calls."""


@cli.command(epilog=EXIT_CODES)
def version() -> None:
    """Print the version of aarmc."""
    click.echo(f"aarmc {__version__}")


@cli.command(epilog=EXIT_CODES)
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--format", "fmt", type=click.Choice(["human", "json", "sarif"]), default="human",
              show_default=True, help="Output format; json is versioned, sarif is SARIF 2.1.0.")
@click.option("--fail-level", type=click.Choice(["error", "warning", "info"]), default="error",
              show_default=True, help="Exit 1 when anything at or above this severity is reported.")
@click.option("--show-level", type=click.Choice(["error", "warning", "info"]), default="info", show_default=True,
              help="Human output: print only diagnostics at or above this severity (the summary counts all).")
@click.option("--no-analysis", is_flag=True, help="Only syntax, names and types: skip the Z3 analysis.")
@click.option("--timeout-ms", type=click.IntRange(100, 3_600_000), default=None,
              help="Solver time limit per query (a query that runs out is an `unknown` finding, exit 3).")
@click.option("--emit-tests", "emit_dir", metavar="DIR",
              help="Write every finding's witness as a ready-to-run `aarmc test` case into DIR.")
@_guarded
def check(paths: tuple[str, ...], fmt: str, fail_level: str, show_level: str, no_analysis: bool,
          timeout_ms: int | None, emit_dir: str | None) -> None:
    """Check policy sets: syntax, names and types, then prove with Z3 what
    LANGUAGE.md §6 lists (dead, shadowed and redundant rules, conflicts,
    modifies a forbid catches, context gaps, and the policy's asserts), each
    finding with a counterexample replayed on the reference interpreter.

    Each PATH is one policy set: a file, or a directory (every `*.aarm` file
    below it, in any declaration order). A directory with no `*.aarm` file of
    its own whose subdirectories hold policies (like `specs/`) is a directory
    of policy sets: each such subdirectory is checked as its own set. With
    several sets, `--format json` prints `{"version", "reports": [...]}` and
    SARIF has one run per set.
    """
    from aarmc import report as rep

    reports = []
    inconclusive = False
    for group in policy_sets(paths):
        result = load(group)
        items: list = list(result.diagnostics)
        if result.policy is not None and not no_analysis:
            analysis = run_analysis(result.policy, timeout_ms=timeout_ms, quiet=fmt != "human")
            items.extend(f.to_item() for f in analysis.findings)
            inconclusive = inconclusive or analysis.inconclusive
            if emit_dir is not None:
                from aarmc.analysis import emit_tests

                target = Path(emit_dir) / (result.policy.name if len(paths) > 1 or Path(group[0]).is_dir()
                                           and len(policy_sets(paths)) > 1 else "")
                emit_tests(analysis, target, result.policy)
        summary = rep.PolicySummary.of(result.policy) if result.policy is not None else None
        reports.append(rep.Report(items=tuple(items), sources=result.sources, policy=summary))
    if fmt == "json":
        docs = [rep.report_json(r) for r in reports]
        click.echo(rep.dumps(docs[0] if len(docs) == 1 else
                             {"version": rep.REPORT_VERSION, "tool": "aarmc", "reports": docs}))
    elif fmt == "sarif":
        logs = [rep.report_sarif(r) for r in reports]
        merged = dict(logs[0], runs=[run for log in logs for run in log["runs"]])
        click.echo(rep.dumps(merged))
    else:
        echo_human("\n".join(rep.format_human(r, show_level) for r in reports))
    if any(_input_error(r.diagnostics) for r in reports):
        sys.exit(EXIT_USAGE)
    if any(r.reaches(fail_level) for r in reports):
        sys.exit(EXIT_FAILED)
    sys.exit(EXIT_INCONCLUSIVE if inconclusive else EXIT_OK)


def run_analysis(policy: Any, *, timeout_ms: int | None = None, quiet: bool = False):
    """The Z3 analysis of one policy set, with a progress line on a terminal when it takes a while.

    A witness that does not replay on the reference interpreter is an internal
    error (exit 2), never a finding.
    """
    import time

    from aarmc.analysis import AnalysisBug, WitnessError, analyze

    kwargs = {} if timeout_ms is None else {"timeout_ms": timeout_ms}
    show = not quiet and sys.stderr.isatty()
    started = time.monotonic()
    status = None

    def progress(step: str) -> None:
        nonlocal status
        if not show or time.monotonic() - started < 1.0:
            return
        if status is None:
            from rich.console import Console

            status = Console(stderr=True).status(f"checking {policy.name}")
            status.start()
        status.update(f"checking {policy.name}: {step}")

    try:
        return analyze(policy, progress=progress, **kwargs)
    except (WitnessError, AnalysisBug) as err:
        diag = err.diagnostic() if hasattr(err, "diagnostic") else None
        click.echo(render_human(diag, {}) if diag is not None else f"error: internal error in the analysis: {err}",
                   err=True)
        sys.exit(EXIT_USAGE)
    finally:
        if status is not None:
            status.stop()


def policy_sets(paths: Sequence[str]) -> list[list[str]]:
    """The policy sets named by PATH arguments (see `aarmc check --help`)."""
    sets: list[list[str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not any(p.is_file() for p in path.glob("*.aarm")):
            children = sorted(child for child in path.iterdir()
                              if child.is_dir() and any(p.is_file() for p in child.rglob("*.aarm")))
            if children:
                sets.extend([str(child)] for child in children)
                continue
        sets.append([raw])
    return sets


def _policy_files(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            below = sorted(p for p in path.rglob("*.aarm") if p.is_file())
            if not below:
                fail(f"no policy files found in `{raw}`", help="policy files end in `.aarm`")
            files.extend(below)
        elif path.exists():
            files.append(path)
        else:
            fail(f"cannot read `{raw}`: no such file or directory")
    return list(dict.fromkeys(files))


@cli.command(epilog=EXIT_CODES)
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--check", "check_only", is_flag=True,
              help="Write nothing; exit 1 and list the files that would change.")
@click.option("--diff", "show_diff", is_flag=True, help="Write nothing; print a unified diff of the changes.")
@_guarded
def fmt(paths: tuple[str, ...], check_only: bool, show_diff: bool) -> None:
    """Format policy files in the canonical layout, in place.

    PATH is a policy file or a directory (every `*.aarm` file below it). Files
    that do not parse are left alone and reported (exit 1).
    """
    from aarmc.source import SourceFile
    from aarmc.syntax.parser import parse_module
    from aarmc.syntax.printer import format_module

    changed: list[str] = []
    broken = 0
    for path in _policy_files(paths):
        display, text = _read_text(str(path), "policy file")
        module, diags = parse_module(SourceFile(name=display, text=text))
        if module is None:
            broken += 1
            for d in diags:
                echo_human(render_human(d, {display: text}) + "\n", err=True)
            click.echo(f"error: not formatting `{display}`: it does not parse", err=True)
            continue
        formatted = format_module(module)
        reparsed, _ = parse_module(SourceFile(name=display, text=formatted))
        if reparsed != module:
            raise AssertionError(f"the formatted `{display}` does not parse back to the same policy")
        if formatted == text:
            continue
        changed.append(display)
        if show_diff:
            click.echo("".join(difflib.unified_diff(
                text.splitlines(keepends=True), formatted.splitlines(keepends=True),
                fromfile=f"{display} (original)", tofile=f"{display} (formatted)")), nl=False)
        if check_only:
            click.echo(f"would reformat {display}", err=True)
        elif not show_diff:
            _write_atomically(path, formatted)
            click.echo(f"reformatted {display}", err=True)
    if broken:
        sys.exit(EXIT_FAILED)
    sys.exit(EXIT_FAILED if check_only and changed else EXIT_OK)


def _write_atomically(path: Path, text: str) -> None:
    """Replace the file's contents without a window in which it is half written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        try:
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        except OSError:
            pass
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_or_exit(policy: str, fmt: str):
    """The loaded policy; on errors, the diagnostics (as `check` prints them) and exit 1 (2 for E09xx)."""
    from aarmc import report as rep

    result = load([policy])
    if result.policy is not None:
        return result
    report = rep.Report(items=result.diagnostics, sources=result.sources)
    if fmt == "json":
        click.echo(rep.dumps(rep.report_json(report)))
    else:
        echo_human(rep.format_human(report))
    sys.exit(EXIT_USAGE if _input_error(report.diagnostics) else EXIT_FAILED)


@cli.command("eval", epilog=EXIT_CODES, short_help="Decide one action and print the decision record.")
@click.argument("policy", metavar="POLICY")
@click.option("--action", "action_path", required=True, metavar="FILE",
              help='The action: {"tool": ..., "params": {...}} (`-` reads stdin).')
@click.option("--session", "session_path", metavar="FILE",
              help="The session the context derives from (LANGUAGE.md §7); default: empty.")
@click.option("--explain", is_flag=True, help="Also show each rule of the tool: true, false or unknown.")
@click.option("--format", "fmt", type=click.Choice(["human", "json"]), default="human", show_default=True,
              help="json prints exactly the decision record.")
@click.option("--key", "key_paths", multiple=True, metavar="PUBLIC_KEY_FILE",
              help="For a compiled artifact: a trusted public key (may repeat).")
@click.option("--unsafe-unsigned", is_flag=True, help="For a compiled artifact: load it without a signature check.")
@_guarded
def eval_(policy: str, action_path: str, session_path: str | None, explain: bool, fmt: str,
          key_paths: tuple[str, ...], unsafe_unsigned: bool) -> None:
    """Decide one action and print the decision record.

    POLICY is a policy file or directory (decided by the reference
    interpreter), or a compiled artifact `*.aarmc` (decided by the runtime
    engine after its signature is verified with --key). Any decision exits 0:
    a DENY is an answer, not a failure.
    """
    from aarmc import reference
    from aarmc import report as rep

    artifact = Path(policy).is_file() and Path(policy).suffix == ".aarmc"
    loaded = None if artifact else _load_or_exit(policy, fmt)
    action = _read_json(action_path, "action file")
    session = _read_json(session_path, "session file") if session_path else None
    _check_shapes(action, action_path, session, session_path)
    if artifact:
        if explain:
            fail("--explain needs the policy source", help="run `aarmc eval` on the policy directory")
        decision = _decide_artifact(policy, key_paths, unsafe_unsigned, action, session)
    else:
        try:
            decision = reference.decide(loaded.policy, action, session)
        except reference.SessionFileError as err:
            fail(f"action or session: {err}")
    record = decision.to_json()
    if fmt == "json":
        click.echo(rep.dumps(record))
        sys.exit(EXIT_OK)
    lines = [f"decision: {record['decision']}", f"reason:   {record['reason']}"]
    lines.append("rules:    " + (", ".join(record["rules"]) if record["rules"] else "(none)"))
    if record.get("message"):
        lines.append(f"message:  {record['message']}")
    for key in ("fields", "approvers"):
        if record.get(key):
            lines.append(f"{key + ':':<10}{', '.join(record[key])}")
    if record.get("timeout_s") is not None:
        lines.append(f"timeout:  {record['timeout_s']}s")
    if "params" in record:
        lines.append(f"params:   {rep.dumps(record['params'], indent=None)}")
    if record.get("wrapper"):
        lines.append(f"tool:     {record.get('tool')} (through `{record['wrapper']}`)")
    if explain:
        lines.extend(_explain(loaded.policy, action, session, decision))
    echo_human("\n".join(lines) + "\n")
    sys.exit(EXIT_OK)


def _decide_artifact(path: str, key_paths: Sequence[str], unsafe_unsigned: bool, action: Any, session: Any):
    """Decide with the runtime engine on a compiled artifact (verified unless explicitly unsafe)."""
    from aarm_runtime import keys
    from aarm_runtime.artifact import ArtifactError
    from aarm_runtime.engine import Engine

    if not key_paths and not unsafe_unsigned:
        fail("a compiled artifact needs a trusted key", help="pass --key PUBLIC_KEY_FILE (or --unsafe-unsigned)")
    trusted = []
    for key_path in key_paths:
        try:
            trusted.append(keys.load_verify_key(Path(key_path)))
        except (keys.KeyFileError, keys.InvalidKeyError, OSError) as err:
            fail(f"public key `{key_path}`: {err}")
    try:
        engine = Engine.load(Path(path), trusted_keys=trusted, unsafe_unsigned=unsafe_unsigned)
    except (ArtifactError, OSError) as err:
        fail(f"`{path}` was not loaded: {err}")
    try:
        return engine.decide(action, session)
    except ValueError as err:  # the engine's action/session format errors
        fail(f"action or session: {err}")


def _check_shapes(action: Any, action_path: str, session: Any, session_path: str | None) -> None:
    """Name the file that is malformed (the interpreter's errors say only where inside it)."""
    from aarmc.reference import context

    try:
        context.read_action(action)
    except context.SessionFileError as err:
        fail(f"action file `{action_path}`: {err}", help='an action is {"tool": "svc.op", "params": {...}}')
    if session is not None:
        try:
            context.read_session(session)
        except context.SessionFileError as err:
            fail(f"session file `{session_path}`: {err}",
                 help="a session's keys are identity, intent, env, risk, now and history (LANGUAGE.md §7)")


def _explain(policy: Any, action: Any, session: Any, decision: Any) -> list[str]:
    """Each rule of the decided tool, its priority and its truth value (reference interpreter)."""
    from aarmc.reference import explain

    rows = explain(policy, action, session)
    lines = ["", f"rules of `{decision.tool}`:" if decision.tool else "rules:"]
    if not rows:
        lines.append("  (no rule was evaluated: " + decision.reason + ")")
        return lines
    width = max(len(r.rule) for r in rows)
    for r in rows:
        prio = "forbid" if r.effect == "forbid" else f"{r.effect} @{r.priority}"
        detail = f"  ({r.detail})" if r.detail else ""
        marker = "*" if r.rule in decision.rules else " "
        lines.append(f"  {marker} {r.value:<7} {r.rule:<{width}}  {prio}{detail}")
    lines.append("  (* = deciding rule)")
    return lines


@cli.command("test", epilog=EXIT_CODES, short_help="Run policy unit tests with rule coverage.")
@click.argument("paths", nargs=-1, required=True, metavar="DIR|FILE...")
@click.option("--policy", "policy", metavar="POLICY",
              help="Run every test against this policy file or directory instead of the one each file names.")
@click.option("--threshold", type=click.FloatRange(0, 100), metavar="PCT",
              help="Fail (exit 1) when a policy's rule coverage is below PCT percent.")
@click.option("--format", "fmt", type=click.Choice(["human", "json"]), default="human", show_default=True,
              help="json is versioned: every case with its decision record, and the coverage.")
@_guarded
def test_(paths: tuple[str, ...], policy: str | None, threshold: float | None, fmt: str) -> None:
    """Run policy unit tests (`*.test.yaml`, see docs/testing.md).

    Each case's action and session go through the reference interpreter and
    the decision record is compared with the case's `expect`. Rule coverage:
    the rules that decided at least one passing case, out of all rules.
    """
    from aarmc import reference
    from aarmc import report as rep
    from aarmc import testing

    result = testing.run(paths, load=load, decide=reference.decide, session_error=reference.SessionFileError,
                         policy_override=policy, threshold=threshold)
    if fmt == "json":
        click.echo(rep.dumps(testing.run_json(result)))
    else:
        echo_human(testing.format_human(result))
    sys.exit(result.exit_code())


@cli.command("import-mcp", epilog=EXIT_CODES, short_help="Declare tools from an MCP `tools/list` result.")
@click.argument("tools_file", metavar="TOOLS.json")
@click.option("--prefix", metavar="SERVICE",
              help="Service name for the tools: `search` becomes `SERVICE.search` (default: mcp).")
@click.option("-o", "--output", metavar="FILE", help="Write the declarations here instead of stdout.")
@_guarded
def import_mcp(tools_file: str, prefix: str | None, output: str | None) -> None:
    """Declare the tools of an MCP server from its `tools/list` result.

    TOOLS.json holds the JSON-RPC response, its `result`, or the list of
    tools (`-` reads stdin). The declarations have no `returns` clause:
    classify each tool's output before using them.
    """
    from aarmc.mcp_import import McpImportError, import_tools
    from aarm_runtime import values

    display, text = _read_text(tools_file, "tools file")
    try:
        document = values.load_json(text)
    except values.JsonError as err:
        fail(f"tools file `{display}`: {err}")
    try:
        declarations = import_tools(document, prefix=prefix, source=display)
    except McpImportError as err:
        fail(f"tools file `{display}`: {err}")
    _check_generated(declarations)
    if output is None:
        click.echo(declarations, nl=False)
        return
    try:
        Path(output).write_text(declarations, encoding="utf-8")
    except OSError as err:
        fail(f"cannot write `{output}`: {(err.strerror or str(err)).lower()}")
    click.echo(f"wrote {declarations.count(chr(10) + 'tool ')} tool declarations to {output}", err=True)


def _check_generated(declarations: str) -> None:
    """The importer's output must load; if it does not, that is a bug, not the user's problem."""
    from aarmc.semantics.load import load_policy_text

    header = 'policy "import-mcp" version "0"\ndefault deny\n'
    result = load_policy_text(header + declarations, name="<import-mcp>")
    if result.policy is None:
        first = result.diagnostics[0] if result.diagnostics else None
        raise AssertionError("generated declarations do not load"
                             + (f": {first.headline()}" if first else ""))


@cli.command(epilog=EXIT_CODES, short_help="Show how two versions of a policy decide differently.")
@click.argument("old", metavar="OLD")
@click.argument("new", metavar="NEW")
@click.option("--fail-on", type=click.Choice(["any", "widen"]), default=None,
              help="Exit 1 on any decision change, or only on a widening one (a new allow or modify).")
@click.option("--format", "fmt", type=click.Choice(["human", "json"]), default="human", show_default=True)
@click.option("--timeout-ms", type=click.IntRange(100, 3_600_000), default=None, help="Solver time limit per query.")
@_guarded
def diff(old: str, new: str, fail_on: str | None, fmt: str, timeout_ms: int | None) -> None:
    """Per tool, each kind of decision change from OLD to NEW (e.g. `email.send:
    deny -> allow`) with a witness replayed on both, or a proof that the two
    policies decide identically. Exit 3 when the solver could not decide."""
    from aarmc import report as rep
    from aarmc.analysis import diff_policies

    loaded = []
    for path in (old, new):
        result = load([path])
        if result.policy is None:
            echo_human(rep.format_human(rep.Report(items=result.diagnostics, sources=result.sources, policy=None)),
                       err=True)
            sys.exit(EXIT_USAGE if _input_error(result.diagnostics) else EXIT_FAILED)
        loaded.append(result.policy)
    kwargs = {} if timeout_ms is None else {"timeout_ms": timeout_ms}
    report = diff_policies(loaded[0], loaded[1], **kwargs)
    if fmt == "json":
        click.echo(rep.dumps(report.to_json()))
    else:
        echo_human(report.format_human())
    if fail_on == "any" and report.changes or fail_on == "widen" and report.widens:
        sys.exit(EXIT_FAILED)
    sys.exit(EXIT_INCONCLUSIVE if report.inconclusive else EXIT_OK)


def _register() -> None:
    from aarmc.cli_compile import compile_, inspect, keygen
    from aarmc.cli_gateway import approve, gateway, pending, reject
    from aarmc.cli_receipts import timeline, verify
    from aarmc.cli_serve import serve

    for command in (keygen, compile_, inspect, verify, timeline, gateway, approve, reject, pending, serve):
        cli.add_command(command)


_register()


def main() -> None:
    """The `aarmc` console script."""
    cli.main(prog_name="aarmc")
