"""Grammar fuzzing: whatever the text, `parse_module` answers with a module or one located E01xx diagnostic.

Three sources of text:
- `from_lark` over the project grammar, raw (tokens glued together as the
  grammar's terminals allow, random whitespace and comments between them);
- `from_lark` with every terminal padded by spaces, which yields mostly valid
  policies: those must also survive the printer round trip;
- mutations of the repository's real policies (characters and tokens deleted,
  inserted, duplicated, swapped; truncation; unicode and control characters;
  very long lines; deep nesting).

Bounded example counts by default; `-m slow` runs many more.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark

from aarmc.diagnostics import render_human
from aarmc.source import SourceFile
from aarmc.syntax.parser import parse_module
from aarmc.syntax.printer import format_module, format_string

from strategies import CONTROL_CHARS, KEYWORDS, grammar_parser, names, regexes, strings, tool_globs

ROOT = Path(__file__).resolve().parents[1]
NAME = "fuzz.aarm"

FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
SLOW = settings(FAST, max_examples=2000)


def check_parse(text: str):
    """The property: a module and no diagnostics, or no module and one located syntax diagnostic."""
    module, diags = parse_module(SourceFile(name=NAME, text=text))
    if module is not None:
        assert diags == []
        return module
    assert len(diags) == 1, diags
    d = diags[0]
    assert re.fullmatch(r"AARM-E01\d\d", d.code) and d.severity == "error", d
    assert d.span is not None and d.span.file == NAME, d
    assert 1 <= d.span.line <= text.count("\n") + 1 and d.span.col >= 1, d
    assert d.message and d.message[0].islower() and not d.message.endswith("."), d
    assert render_human(d, {NAME: text}).startswith(f"{NAME}:{d.span.line}:{d.span.col}: error[{d.code}]")
    return None


def check_round_trip(module) -> None:
    text = format_module(module)
    again, diags = parse_module(SourceFile(name=NAME, text=text))
    assert not diags, (text, diags)
    assert again == module, text
    assert [c.text for c in again.comments] == [c.text for c in module.comments], text
    assert format_module(again) == text


# ---- from_lark --------------------------------------------------------------------------

_terminals = {t.name: t for t in grammar_parser().terminals}
_ignored = [n for n in grammar_parser().ignore_tokens]
_whitespace = next(n for n in _ignored if n != "COMMENT")

_durations = st.tuples(st.integers(min_value=0, max_value=400), st.sampled_from("smhd")).map(lambda t: f"{t[0]}{t[1]}")
_ints = st.one_of(st.integers(min_value=0, max_value=2000), st.integers(min_value=0, max_value=2**64)).map(str)

# Fast, mostly well-formed spellings of the pattern terminals; the raw mode
# still produces glued and invalid combinations of them.
_explicit_raw = {
    "TOOL": tool_globs,
    "NAME": names,
    "STRING": strings.map(format_string),
    "REGEX": regexes.map(lambda r: f"/{r[0]}/{r[1]}"),
    "DURATION": _durations,
    "INT": _ints,
    "SIGNED_INT": _ints.map(lambda s: "-" + s),
    "DECIMAL": st.tuples(_ints, st.from_regex(r"[0-9]{1,4}", fullmatch=True), st.booleans()).map(
        lambda t: ("-" if t[2] else "") + t[0] + "." + t[1]),
    "COMMENT": st.text(alphabet=st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)),
                       max_size=8).map(lambda s: "#" + s),
    _whitespace: st.sampled_from([" ", "\n", "\t", "  \r\n", "\x0c"]),
}
assert set(_explicit_raw) <= set(_terminals), sorted(set(_explicit_raw) - set(_terminals))


def _spaced(name: str, strategy=None):
    term = _terminals[name]
    if strategy is None:
        strategy = st.just(term.pattern.value)
    if name == "COMMENT":
        return strategy.map(lambda s: f" {s}\n")
    return strategy.map(lambda s: f" {s} ")


_explicit_spaced = {
    name: _spaced(name, _explicit_raw.get(name) if term.pattern.type == "re" else None)
    for name, term in _terminals.items()
}
# A NAME that is one of the keywords is still worth generating (the contextual
# lexer often reads it as a NAME), but mostly plain ones keep the policies valid.
_explicit_spaced["NAME"] = _spaced("NAME", names.filter(lambda n: n not in KEYWORDS) | names)
_explicit_spaced["COMMENT"] = _spaced("COMMENT", st.text(
    alphabet=st.characters(blacklist_characters=CONTROL_CHARS + "\n", blacklist_categories=("Cs",)),
    max_size=8).map(lambda s: "#" + s))

raw_policies = from_lark(grammar_parser(), explicit=_explicit_raw)
spaced_policies = from_lark(grammar_parser(), explicit=_explicit_spaced)


@FAST
@given(raw_policies)
def test_raw_grammar_strings_parse_or_fail_cleanly(text):
    check_parse(text)


@FAST
@given(spaced_policies)
def test_spaced_grammar_strings_parse_and_round_trip(text):
    module = check_parse(text)
    if module is not None:
        check_round_trip(module)


@pytest.mark.slow
@SLOW
@given(st.one_of(raw_policies, spaced_policies))
def test_grammar_strings_many(text):
    module = check_parse(text)
    if module is not None:
        check_round_trip(module)


def test_spaced_grammar_strings_are_mostly_valid():
    """The spaced generator is only a useful round-trip source if its policies usually parse."""
    seen = []

    @settings(FAST, max_examples=40, database=None)
    @given(spaced_policies)
    def collect(text):
        seen.append(check_parse(text) is not None)

    collect()
    assert sum(seen) >= len(seen) * 3 // 4, f"{sum(seen)} of {len(seen)} parsed"


# ---- mutations of real policies --------------------------------------------------------

def _corpus() -> list[str]:
    files = sorted((ROOT / "specs").rglob("*.aarm")) + [ROOT / "tests" / "data" / "language_example.aarm"]
    return [p.read_text("utf-8") for p in files if p.is_file()]


CORPUS = _corpus()

_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\\n]|\\.)*"|/(?:[^/\\\n]|\\.)+/i?|[A-Za-z_][A-Za-z0-9_.*]*'
                    r"|-?\d+(?:\.\d+)?[smhd]?|[=!<>]=|.", re.S)

_odd_chars = st.one_of(
    st.sampled_from(list('\x00\x01\x08\x0b\x1b\x7f\r\x0c\t\n\u2028\u2029\x85\ufeff\ud800\u0301"\\/#()[]{}:,.*?<>=!-')),
    st.characters(),
)
_nestings = st.sampled_from([
    "(" * 500, ")" * 500, "(" * 500 + "a" + ")" * 500, "not " * 500, "[" * 500 + "]" * 500,
    "len(" * 300, "all x in y: " * 300, "list[" * 500, "(a == " * 300, "{" * 500,
])


@st.composite
def mutated_policies(draw):
    text = draw(st.sampled_from(CORPUS))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["delete", "insert", "duplicate", "swap", "truncate",
                                   "token_delete", "token_duplicate", "token_swap", "odd", "long", "nest"]))
        n = len(text)
        i = draw(st.integers(min_value=0, max_value=n))
        j = draw(st.integers(min_value=i, max_value=min(n, i + 40)))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "insert":
            text = text[:i] + draw(st.text(max_size=5)) + text[i:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        elif op == "swap":
            k = draw(st.integers(min_value=j, max_value=n))
            m = draw(st.integers(min_value=k, max_value=min(n, k + 40)))
            text = text[:i] + text[k:m] + text[j:k] + text[i:j] + text[m:]
        elif op == "truncate":
            text = text[:i]
        elif op.startswith("token_"):
            tokens = _TOKEN.findall(text)
            if len(tokens) < 2:
                continue
            a = draw(st.integers(min_value=0, max_value=len(tokens) - 1))
            b = draw(st.integers(min_value=0, max_value=len(tokens) - 1))
            if op == "token_delete":
                del tokens[a]
            elif op == "token_duplicate":
                tokens.insert(b, tokens[a])
            else:
                tokens[a], tokens[b] = tokens[b], tokens[a]
            text = "".join(tokens)
        elif op == "odd":
            text = text[:i] + "".join(draw(st.lists(_odd_chars, min_size=1, max_size=3))) + text[i:]
        elif op == "long":
            piece = draw(st.sampled_from(["x", "a and ", '"' + "s" * 50, "9", "  ", "#", "é"]))
            text = text[:i] + piece * draw(st.integers(min_value=1000, max_value=20000)) + text[i:]
        else:
            text = text[:i] + draw(_nestings) + text[i:]
    return text


@FAST
@given(mutated_policies())
def test_mutated_policies_parse_or_fail_cleanly(text):
    module = check_parse(text)
    if module is not None:
        check_round_trip(module)


@pytest.mark.slow
@settings(SLOW, max_examples=3000)
@given(mutated_policies())
def test_mutated_policies_many(text):
    module = check_parse(text)
    if module is not None:
        check_round_trip(module)


# ---- fixed hard cases ---------------------------------------------------------------------

_PREFIX = 'policy "p" version "1"\ndefault deny\nallow "r" t.x when '


@pytest.mark.parametrize("text", [
    _PREFIX + "(" * 500 + "a" + ")" * 500,
    _PREFIX + "(" * 500 + "a",
    _PREFIX + "a" + ")" * 500,
    _PREFIX + "not " * 5000 + "a",
    _PREFIX + "all x in y: " * 2000 + "a",
    _PREFIX + "len(" * 2000 + "a" + ")" * 2000,
    _PREFIX + "(a == " * 2000 + "a" + ")" * 2000,
    _PREFIX + "a from (" * 500,
    _PREFIX + " and ".join(["a"] * 5000),
    _PREFIX + " or ".join(["not (a and b)"] * 2000),
    _PREFIX + "x matches /" + "a" * 100000 + "/",
    _PREFIX + "x == " + "9" * 100000,
    _PREFIX + "x == 0." + "9" * 100000,
    "const c = " + "[" * 3000 + "]" * 3000,
    "const c = " + "{" * 3000,
    "env e: " + "list[" * 3000 + "int" + "]" * 3000,
    "tool a.b(" + ", ".join(f"p{i}: str" for i in range(5000)) + ")",
    'const s = "' + "x" * 200000 + '"',
    "# " + "x" * 200000,
    "\ufeffpolicy \"p\" version \"1\"",
    "policy \"p\" version \"1\"\r\ndefault deny\r\n",
    "\x00",
    "\ud800",
    "",
])
def test_hard_inputs(text):
    module = check_parse(text)
    if module is not None:
        check_round_trip(module)
