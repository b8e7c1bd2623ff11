"""parse → print → parse round trips: the printer loses nothing and is a fixed point.

For every policy file in the repository (discovered when the tests run), the
LANGUAGE.md §2 example and random ASTs from `tests/strategies.py`:
`parse(format(m)) == m` (spans aside), comments survive in order, and
`format(parse(format(m))) == format(m)`.

The golden file for the §2 example is rewritten with `AARMC_BLESS=1`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aarmc.source import SourceFile
from aarmc.syntax import ast
from aarmc.syntax.parser import parse_module
from aarmc.syntax.printer import format_module

from strategies import CONTROL_CHARS, modules

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "tests" / "data" / "language_example.aarm"
GOLDEN = ROOT / "tests" / "golden" / "fmt" / "language_example.expected"


def _parse(text: str, name: str = "p.aarm") -> ast.Module:
    module, diags = parse_module(SourceFile(name=name, text=text))
    assert not diags, "\n".join(f"{d.span.start if d.span else name}: {d.headline()}" for d in diags)
    return module


def assert_round_trip(module: ast.Module) -> str:
    """Check the three properties for one module; return its canonical text."""
    text = format_module(module)
    again = _parse(text, module.file)
    assert again == module, text
    assert [c.text for c in again.comments] == [c.text for c in module.comments], text
    assert format_module(again) == text
    return text


def _policy_files() -> list[Path]:
    files = set()
    for top in ("specs", "tests"):
        if (ROOT / top).is_dir():
            files.update((ROOT / top).rglob("*.aarm"))
    return sorted(files)


@pytest.mark.parametrize("path", _policy_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_repository_policies_round_trip(path: Path):
    rel = path.relative_to(ROOT)
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError:
        assert rel.parts[0] == "tests", f"{rel} is not UTF-8"
        pytest.skip("input-file fixture (not UTF-8)")
    module, diags = parse_module(SourceFile(name=str(rel), text=text))
    if diags:
        # Under tests/ a file that does not parse is a syntax-error fixture; a spec must parse.
        assert rel.parts[0] == "tests", f"{rel}: {diags[0].headline()}"
        pytest.skip(f"syntax-error fixture: {diags[0].headline()}")
    assert_round_trip(module)


def test_language_example_round_trips_and_matches_golden():
    module = _parse(EXAMPLE.read_text("utf-8"), "language_example.aarm")
    assert len(module.comments) == 11
    text = assert_round_trip(module)
    if os.environ.get("AARMC_BLESS") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text, "utf-8")
    assert GOLDEN.exists(), "no golden file: run with AARMC_BLESS=1"
    assert text == GOLDEN.read_text("utf-8"), "printer output changed: review, then rerun with AARMC_BLESS=1"


def test_golden_output_is_canonical():
    text = GOLDEN.read_text("utf-8")
    assert format_module(_parse(text)) == text
    assert max(len(line) for line in text.splitlines()) <= 100


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(modules())
def test_random_modules_round_trip(module):
    assert_round_trip(module)


_comment_text = st.text(
    alphabet=st.characters(blacklist_characters=CONTROL_CHARS + "\n", blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(modules(max_decls=4), st.data())
def test_comments_survive_anywhere(module, data):
    """Comments on their own lines or at the ends of lines, anywhere: kept, in order, and stable."""
    lines = format_module(module).split("\n")
    out = []
    for line in lines:
        for _ in range(data.draw(st.integers(min_value=0, max_value=1))):
            out.append("# " + data.draw(_comment_text))
        if line and data.draw(st.booleans()):
            line += "  #" + data.draw(_comment_text)
        out.append(line)
    text = "\n".join(out)
    commented = _parse(text, module.file)
    assert commented == module
    canonical = assert_round_trip(commented)
    assert canonical.count("#") >= len(commented.comments)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(modules(max_decls=10))
def test_random_modules_round_trip_many(module):
    assert_round_trip(module)
