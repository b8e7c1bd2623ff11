"""Intent alignment and cumulative drift (AARM R7): `intent.score` and `risk.drift` per action.

An `Aligner` compares an action the agent proposes with the user's original
request (the session's `intent`, LANGUAGE.md §7) and answers an `Alignment`:

- `score` — how well *this* action fits the request, in [0, 1];
- `drift` — how far the session has drifted so far, this action included, in
  [0, 1]; a recurrence over the previous action's drift, so it costs O(1)
  however long the session is.

The guard puts them in the context as `intent.score` and `risk.drift`, and the
policy acts on them with ordinary rules (`defer "drifted" ... when risk.drift
> 0.5 timeout 10m`). An aligner that cannot say (no intent) answers None and
both stay absent, hence unknown (LANGUAGE.md §5.3). An aligner that raises
denies the action: the guard treats it as an internal error.

Values are exact: both numbers are `Decimal` in canonical form (no trailing
zeros) with at most 4 decimal places, computed with exact rational arithmetic
(integer numerator and denominator pairs, no floats; the configured constants
are `Fraction`s), sets iterated only for membership and dict keys visited sorted, so
every replica computes the same values from the same inputs, whatever the
hash seed, the decimal context or the key order of the params.

`OverlapAligner` is the deterministic default (lexical overlap between the
action and the request); docs/aligner.md explains its scores and gives the
calibration measured by tests/test_aligner.py.

>>> aligner = OverlapAligner()
>>> intent = {"text": "send the Q3 notes to bob@corp.example", "tools": ["email.send"]}
>>> first = aligner.assess(intent, "email.send", {"to": "bob@corp.example", "subject": "Q3 notes"}, [])
>>> first
Alignment(score=Decimal('1'), drift=Decimal('0'))
>>> aligner.assess(intent, "email.send", {"to": "eve@evil.example", "subject": "Q3 notes"}, [first])
Alignment(score=Decimal('0.1667'), drift=Decimal('0.2778'))
>>> aligner.assess(None, "email.send", {"to": "eve@evil.example"}, []) is None
True
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any, Protocol, runtime_checkable

from aarm_runtime import values

__all__ = [
    "DEFAULT_STOPWORDS",
    "PUBLIC_MAIL_DOMAINS",
    "Aligner",
    "Alignment",
    "OverlapAligner",
    "drift_step",
]

_SCALE = 10_000  # 4 decimal places
_ZERO = Decimal(0)


def _unit_decimal(value: Any, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise TypeError(f"`{what}` must be a Decimal, got `{type(value).__name__}`")
    if isinstance(value, Decimal) and not value.is_finite():
        raise ValueError(f"`{what}` must be finite")
    if type(value) is Decimal:
        sign, digits, exponent = value.as_tuple()
        # Written with at most 4 places and in [0, 1] (comparisons are exact): the coefficient is at most
        # 10^4; the canonical form drops trailing zeros, built from the tuple (no decimal context involved).
        # Anything else takes the exact path below.
        if type(exponent) is int and exponent >= -4 and 0 <= value <= 1:
            if not any(digits):
                return _ZERO
            kept = list(digits)
            while exponent < 0 and kept[-1] == 0:
                kept.pop()
                exponent += 1
            return Decimal((0, tuple(kept), exponent))
    exact = Fraction(value)
    if not 0 <= exact <= 1:
        raise ValueError(f"`{what}` must be in [0, 1]")
    if (exact * _SCALE).denominator != 1:
        raise ValueError(f"`{what}` may have at most 4 decimal places")
    return _decimal(int(exact * _SCALE))


def _decimal(scaled: int) -> Decimal:
    """The canonical Decimal of ``scaled / 10^4`` (scaled in [0, 10^4]; every value is made once)."""
    got = _DECIMALS.get(scaled)
    if got is None:
        # Built from text, so that no decimal context (precision, rounding) is involved.
        got = Decimal(values.canonical_decimal(Decimal(f"{scaled // _SCALE}.{scaled % _SCALE:04d}")))
        if 0 <= scaled <= _SCALE:
            _DECIMALS[scaled] = got
    return got


_DECIMALS: dict[int, Decimal] = {}


def _scaled(value: Decimal) -> int | None:
    """``value × 10^4`` as an int when that is exact (at most 4 places), else None; no decimal context."""
    sign, digits, exponent = value.as_tuple()
    if type(exponent) is not int or exponent < -4:
        return None
    n = 0
    for digit in digits:
        n = n * 10 + digit
    n *= 10 ** (exponent + 4)
    return -n if sign else n


# Exact rationals as (numerator, denominator) pairs, denominator > 0, not reduced: the few operations
# of one score stay small, and cost a fraction of `Fraction`'s (which reduces by gcd at every step and
# dispatches on types). The result is rounded once, exactly.
_Q = tuple[int, int]
_Q0: _Q = (0, 1)
_Q1: _Q = (1, 1)


def _q(value: Fraction) -> _Q:
    return (value.numerator, value.denominator)


def _q_add(a: _Q, b: _Q) -> _Q:
    return (a[0] * b[1] + b[0] * a[1], a[1] * b[1])


def _q_mul(a: _Q, b: _Q) -> _Q:
    return (a[0] * b[0], a[1] * b[1])


def _q_less(a: _Q, b: _Q) -> bool:
    return a[0] * b[1] < b[0] * a[1]


def _q_mean(items: list[_Q]) -> _Q:
    total = _Q0
    for item in items:
        total = _q_add(total, item)
    return (total[0], total[1] * len(items))


def _q_round(a: _Q) -> int:
    """``a × 10^4`` rounded to the nearest int, ties to even (as ``round(Fraction)``)."""
    whole, rest = divmod(a[0] * _SCALE, a[1])
    twice = 2 * rest
    if twice > a[1] or (twice == a[1] and whole % 2 == 1):
        return whole + 1
    return whole


@dataclasses.dataclass(frozen=True, slots=True)
class Alignment:
    """An action's alignment with the request, and the session's drift including it.

    Both are canonical `Decimal`s in [0, 1] with at most 4 decimal places
    (checked: a malformed `prior` fails loudly rather than skewing drift).

    >>> Alignment(Decimal("0.50"), Decimal("0"))
    Alignment(score=Decimal('0.5'), drift=Decimal('0'))
    """

    score: Decimal
    drift: Decimal

    def __post_init__(self) -> None:
        object.__setattr__(self, "score", _unit_decimal(self.score, "score"))
        object.__setattr__(self, "drift", _unit_decimal(self.drift, "drift"))

    @classmethod
    def _canonical(cls, score: Decimal, drift: Decimal) -> Alignment:
        """For values `_decimal` made (canonical, on the grid, in [0, 1]): the checks above would pass."""
        made = object.__new__(cls)
        object.__setattr__(made, "score", score)
        object.__setattr__(made, "drift", drift)
        return made


@runtime_checkable
class Aligner(Protocol):
    """What the guard asks for each new action of a session (AARM R7)."""

    def assess(self, intent: Mapping[str, Any] | None, tool: str, params: Any,
               prior: Sequence[Alignment]) -> Alignment | None:
        """The action's alignment, or None when there is nothing to compare it with.

        `intent` is the session's intent as opened (LANGUAGE.md §7), `tool` the
        tool as called (a meta-tool is not resolved), `params` the proposed
        JSON params, `prior` the alignments of the session's earlier new
        actions in order. Must be deterministic and must not raise on any
        params: an exception denies the action.
        """
        ...


def drift_step(previous: Decimal, score: Decimal, *, rise: Fraction = Fraction(1, 3),
               fall: Fraction = Fraction(1, 10)) -> Decimal:
    """The session's drift after an action with alignment `score`, from the drift before it.

    An asymmetric exponentially weighted moving average of the misalignment
    ``m = 1 - score`` (an attack/release envelope): drift moves toward ``m``
    by the fraction `rise` when ``m`` is above it and by `fall` when below,
    then is rounded toward ``m`` to 4 places, so it never overshoots and
    reaches ``m`` exactly after a steady run. A session starts at 0 (the
    request itself is perfectly aligned).

    >>> d = Decimal(0)
    >>> for s in ("0", "0", "0"):        # three unrelated actions in a row
    ...     d = drift_step(d, Decimal(s))
    >>> d
    Decimal('0.7038')
    >>> drift_step(d, Decimal(1))        # then a perfectly aligned one
    Decimal('0.6334')
    """
    prev_s = _scaled(previous) if type(previous) is Decimal else None
    score_s = _scaled(score) if type(score) is Decimal else None
    if prev_s is not None and score_s is not None and type(rise) is Fraction and type(fall) is Fraction:
        # Both on the 10^-4 grid (what alignments hold): the same steps in integers (ceil / floor).
        target_s = _SCALE - score_s
        if target_s >= prev_s:
            return _decimal(prev_s - (-rise.numerator * (target_s - prev_s) // rise.denominator))
        return _decimal(prev_s + (-fall.numerator * (prev_s - target_s) // fall.denominator))
    prev = Fraction(previous)
    target = 1 - Fraction(score)
    if target >= prev:
        scaled = math.ceil((prev + rise * (target - prev)) * _SCALE)
    else:
        scaled = math.floor((prev - fall * (prev - target)) * _SCALE)
    return _decimal(scaled)


# --------------------------------------------------------------------------- defaults

# Words too common to say anything about what a request is about (three letters
# or more: shorter words never count, like provenance tokens).
DEFAULT_STOPWORDS: frozenset[str] = frozenset("""
    the and for with from this that these those are was were will would could should
    you your yours our ours his her hers its they them their there here what when where
    which who whom how why all any some not but has have had can may might must shall
    into onto about above below after before over under then than also just very too
    please thank thanks hi hello dear regards best cheers let get got make made via per
    out off own same such only both each few more most other nor yes now one ones
""".split())

# Mail providers whose domain is shared by strangers: naming one address there
# says nothing about another.
PUBLIC_MAIL_DOMAINS: frozenset[str] = frozenset("""
    gmail.com googlemail.com outlook.com hotmail.com live.com msn.com yahoo.com ymail.com
    icloud.com me.com mac.com aol.com proton.me protonmail.com pm.me gmx.com gmx.de gmx.net
    web.de mail.com mail.ru yandex.ru yandex.com qq.com 163.com 126.com zoho.com
    fastmail.com tutanota.com hey.com
""".split())

# The provenance token runs (maximal runs of letters, digits, `@ . _ -`): a term
# here is exactly what a `from` condition could match in the same text.
_TOKEN_RUN = values.TOKEN_RUN
_WORD = re.compile(r"[^\W_]+")  # the alphanumeric parts of a run
_WHITESPACE = re.compile(r"\s")
_HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _lower(text: str) -> str:
    # ASCII only, like provenance: Unicode case mappings change with the
    # Unicode version of the Python that runs a replica.
    return text.translate(_ASCII_LOWER)


def _frac(value: Any, what: str, *, positive: bool = False) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, Fraction)):
        raise TypeError(f"`{what}` must be an int, Decimal or Fraction (floats are not exact), "
                        f"got `{type(value).__name__}`")
    if isinstance(value, Decimal) and not value.is_finite():
        raise ValueError(f"`{what}` must be finite")
    exact = Fraction(value)
    if not 0 <= exact <= 1 or (positive and exact == 0):
        raise ValueError(f"`{what}` must be in {'(0, 1]' if positive else '[0, 1]'}")
    return exact


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{what}` must be a positive int")
    return value


# --------------------------------------------------------------------------- the request


@dataclasses.dataclass(frozen=True, slots=True)
class _Request:
    """What an intent offers to compare with, derived once per distinct intent."""

    terms: values.TokenIndex  # text, entities and tools: whole tokens, ASCII-case-insensitive
    phrases: frozenset[str]  # lower-cased entities and tools, for values that are no single token
    words: frozenset[str]  # normalised alphanumeric words of text and entities
    domains: frozenset[str]  # email domains and host names named anywhere
    tools: frozenset[str]
    services: frozenset[str]
    has_tool_evidence: bool  # tools or text present: the tool can be judged


def _strings(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, (list, tuple)):
        return ()
    return tuple(item for item in raw if isinstance(item, str))


def _host_like(term: str) -> bool:
    labels = term.split(".")
    return (len(labels) >= 2 and all(_HOST_LABEL.fullmatch(label) for label in labels)
            and labels[-1].isalpha() and len(labels[-1]) >= 2)


def _parents(domain: str) -> Iterable[str]:
    """The domain and its parents of two labels or more: `a.corp.example`, `corp.example`."""
    labels = domain.split(".")
    for i in range(len(labels) - 1):
        yield ".".join(labels[i:])


# --------------------------------------------------------------------------- the aligner


@dataclasses.dataclass(frozen=True, slots=True)
class _Items:
    """The scored evidence of one action's params."""

    dests: list[_Q]
    objects: list[_Q]
    contents: list[_Q]


@dataclasses.dataclass(frozen=True, slots=True)
class OverlapAligner:
    """The default aligner: lexical overlap between an action and the request.

    An action is compared with the request's `tools`, `entities` and `text`
    (tokens as provenance reads them, and their alphanumeric words):

    - **tool** ``T``: 1 if listed in `intent.tools`; `service_credit` if
      another tool of its service is listed; `word_credit` if a word of its
      name occurs in the request; else 0.
    - **destinations** (params that are email addresses or URLs) ``D``, the
      worst of them: 1 if named; `domain_credit` if its domain (or a parent)
      is named and is not a public mail domain; for a URL, `url_word_credit`
      times the overlap of its host and path words; else 0.
    - **objects** (single-token strings: ids, names, paths) ``O``, their mean:
      1 if named (for a path: its file name); else the overlap of its words.
      Numbers the request names count 1; others are ignored.
    - **content** (strings with spaces) ``C``, the mean overlap of their
      words, weighted `content_weight` against D and O.

    The overlap of some words is 0 if the request uses none of them, else
    `partial_credit` plus the rest in proportion to the share it uses.

    ``P`` is the weighted mean of D, O and C (those present). A destination
    the request never named voids the tool's credit (``T' = T × D``): the
    user asked to send mail, not to send it there. Then ``score`` is the
    bilinear blend with corners (T', P) = (1, 1) → 1, (1, 0) → `tool_only`,
    (0, 1) → `target_only`, (0, 0) → 0; an action with no params to judge
    scores ``T'``; without tools or text, ``P``. With nothing to compare
    (no intent, or one with no text, entities nor tools): None.

    Params are read breadth first, object keys sorted, within `max_nodes`
    values, `max_depth` levels, `max_items` scored strings and `max_chars`
    characters (`max_string_chars` of any one string); what is left unread
    counts as an unnamed destination, so a hostile action can only lower its
    score by hiding things in bulk. The opened intent's own `score` is not
    used. A meta-tool is judged as called (`mcp.invoke`): the guard has not
    resolved it here; the wrapped tool name is then a param, which matches
    `intent.tools` as an object.
    """

    tool_only: Fraction = Fraction(3, 10)
    target_only: Fraction = Fraction(1, 2)
    service_credit: Fraction = Fraction(1, 2)
    word_credit: Fraction = Fraction(1, 2)
    domain_credit: Fraction = Fraction(3, 4)
    url_word_credit: Fraction = Fraction(1, 2)
    content_weight: Fraction = Fraction(1, 2)
    partial_credit: Fraction = Fraction(1, 2)
    rise: Fraction = Fraction(1, 3)
    fall: Fraction = Fraction(1, 10)
    stopwords: frozenset[str] = DEFAULT_STOPWORDS
    public_domains: frozenset[str] = PUBLIC_MAIL_DOMAINS
    max_nodes: int = 4096
    max_depth: int = 64
    max_items: int = 256
    max_chars: int = 65536
    max_string_chars: int = 4096
    _cache: dict[Any, _Request] = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)
    # The constants as exact (numerator, denominator) pairs, for the arithmetic of `_score`.
    _k: dict[str, _Q] = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("tool_only", "target_only", "service_credit", "word_credit", "domain_credit",
                     "url_word_credit", "content_weight", "partial_credit"):
            object.__setattr__(self, name, _frac(getattr(self, name), name))
        for name in ("rise", "fall"):
            object.__setattr__(self, name, _frac(getattr(self, name), name, positive=True))
        for name in ("max_nodes", "max_depth", "max_items", "max_chars", "max_string_chars"):
            _count(getattr(self, name), name)
        object.__setattr__(self, "stopwords", frozenset(_lower(w) for w in self.stopwords))
        object.__setattr__(self, "public_domains", frozenset(_lower(d) for d in self.public_domains))
        for name in ("tool_only", "target_only", "service_credit", "word_credit", "domain_credit",
                     "url_word_credit", "content_weight", "partial_credit"):
            self._k[name] = _q(getattr(self, name))

    # ---- the interface -----------------------------------------------------------------

    def assess(self, intent: Mapping[str, Any] | None, tool: str, params: Any,
               prior: Sequence[Alignment]) -> Alignment | None:
        """The action's alignment and the session's drift (see the class notes)."""
        score = self.score(intent, tool, params)
        if score is None:
            return None
        drift = self.next_drift(prior[-1] if prior else None, score)
        if _DECIMALS.get(_scaled(score)) is score and _DECIMALS.get(_scaled(drift)) is drift:
            return Alignment._canonical(score, drift)  # both made here by `_decimal`: canonical, in [0, 1]
        return Alignment(score=score, drift=drift)

    def next_drift(self, last: Alignment | None, score: Decimal) -> Decimal:
        """The drift after an action scored `score`, from the previous action's alignment."""
        if last is None:
            previous = Decimal(0)
        elif isinstance(last, Alignment):
            previous = last.drift
        else:
            raise TypeError(f"`prior` must hold `Alignment` values, got `{type(last).__name__}`")
        return drift_step(previous, score, rise=self.rise, fall=self.fall)

    def drift_of(self, scores: Iterable[Decimal]) -> Decimal:
        """The drift of a whole session from its scores, folded from 0 (what `assess` accumulates)."""
        drift = Decimal(0)
        for score in scores:
            drift = drift_step(drift, score, rise=self.rise, fall=self.fall)
        return drift

    def score(self, intent: Mapping[str, Any] | None, tool: str, params: Any) -> Decimal | None:
        """The action's alignment score alone (`intent.score`), or None."""
        request = self._request(intent)
        if request is None:
            return None
        return _decimal(_q_round(self._score(request, tool, params)))

    # ---- the request ------------------------------------------------------------------

    def _request(self, intent: Mapping[str, Any] | None) -> _Request | None:
        if not isinstance(intent, Mapping):
            return None
        text = intent.get("text")
        text = text if isinstance(text, str) else None
        entities = _strings(intent.get("entities"))
        tools = _strings(intent.get("tools"))
        if text is None and not entities and not tools:
            return None
        key = (text, entities, tools)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        request = self._build_request(text, entities, tools)
        if len(self._cache) >= 64:
            self._cache.clear()
        self._cache[key] = request
        return request

    def _build_request(self, text: str | None, entities: tuple[str, ...], tools: tuple[str, ...]) -> _Request:
        texts = ([text] if text is not None else []) + list(entities) + list(tools)
        words: set[str] = set()
        domains: set[str] = set()
        for source in ([text] if text is not None else []) + list(entities):
            for run in _TOKEN_RUN.findall(source):
                words.update(self._words(run))
                term = _lower(run).rstrip(".")
                if "@" in term:
                    domain = term.rpartition("@")[2]
                    if _host_like(domain):
                        domains.add(domain)
                elif _host_like(term):
                    domains.add(term)
        for entity in entities:
            if "://" in entity:
                try:
                    domains.add(values.parse_url(entity).host)
                except ValueError:
                    pass
        return _Request(
            terms=values.TokenIndex(texts),
            phrases=frozenset(_lower(s).strip() for s in list(entities) + list(tools)),
            words=frozenset(words),
            domains=frozenset(domains),
            tools=frozenset(tools),
            services=frozenset(t.rpartition(".")[0] for t in tools if "." in t),
            has_tool_evidence=bool(tools) or text is not None,
        )

    def _words(self, text: str) -> set[str]:
        """Normalised words: alphanumeric parts of 3+ characters, lower-cased, a plural `s` dropped."""
        out = set()
        for word in _WORD.findall(text):
            word = _lower(word)
            if len(word) >= 5 and word.endswith("s") and not word.endswith("ss"):
                word = word[:-1]
            if len(word) >= 3 and word not in self.stopwords:
                out.add(word)
        return out

    def _named(self, request: _Request, text: str) -> bool:
        """Whether `text` is named in the request: a whole token of it, an entity or a tool."""
        lowered = _lower(text)
        if lowered in request.phrases:
            return True
        # Only single tokens are looked up in the index: that is a set lookup,
        # where anything else would scan the whole request for every value.
        return len(text) >= 3 and _TOKEN_RUN.fullmatch(text) is not None and request.terms.contains(
            values.Token(lowered, ((0, len(lowered)),)))

    def _overlap(self, request: _Request, words: set[str]) -> _Q | None:
        """How much of `words` the request uses: 0 for none, else `partial_credit` plus the rest
        of the way in proportion (a value related to the request by one word is no stranger).
        Numbers count only when they match: an unnamed number is a detail, not a topic."""
        matched = sum(1 for w in words if w in request.words)
        unmatched = sum(1 for w in words if w not in request.words and not w.isdigit())
        if matched + unmatched == 0:
            return None
        if matched == 0:
            return _Q0
        # partial + (1 - partial) × matched / (matched + unmatched)
        pn, pd = self._k["partial_credit"]
        total = matched + unmatched
        return (pn * total + (pd - pn) * matched, pd * total)

    # ---- the action -------------------------------------------------------------------

    def _tool_evidence(self, request: _Request, tool: str) -> _Q | None:
        if not request.has_tool_evidence:
            return None
        if not isinstance(tool, str):
            return _Q0
        if tool in request.tools:
            return _Q1
        best = _Q0
        if "." in tool and tool.rpartition(".")[0] in request.services:
            best = self._k["service_credit"]
        if self._words(tool) & request.words and _q_less(best, self._k["word_credit"]):
            best = self._k["word_credit"]
        return best

    def _score(self, request: _Request, tool: str, params: Any) -> _Q:
        t = self._tool_evidence(request, tool)
        items = self._items(request, params)
        parts: list[tuple[_Q, _Q]] = []
        d = None
        for dest in items.dests:
            if d is None or _q_less(dest, d):
                d = dest
        if d is not None:
            parts.append((d, _Q1))
        if items.objects:
            parts.append((_q_mean(items.objects), _Q1))
        content_weight = self._k["content_weight"]
        if items.contents and content_weight[0] > 0:
            parts.append((_q_mean(items.contents), content_weight))
        weight = _Q0
        weighted = _Q0
        for v, w in parts:
            weight = _q_add(weight, w)
            weighted = _q_add(weighted, _q_mul(v, w))
        # p = weighted / weight
        p = (weighted[0] * weight[1], weighted[1] * weight[0]) if weight[0] else None
        if t is None:
            return p if p is not None else _Q0
        if d is not None:
            t = _q_mul(t, d)
        if p is None:
            return t
        # t·p + tool_only·t·(1 − p) + target_only·(1 − t)·p
        not_p = (p[1] - p[0], p[1])
        not_t = (t[1] - t[0], t[1])
        return _q_add(_q_add(_q_mul(t, p), _q_mul(self._k["tool_only"], _q_mul(t, not_p))),
                      _q_mul(self._k["target_only"], _q_mul(not_t, p)))

    def _items(self, request: _Request, params: Any) -> _Items:
        items = _Items([], [], [])
        queue: collections.deque[tuple[Any, int]] = collections.deque([(params, 0)])
        # Counted when enqueued, so that neither a huge list nor a huge object
        # is ever walked or sorted past the budget.
        enqueued, chars, scored = 1, 0, 0
        truncated = False
        while queue:
            value, depth = queue.popleft()
            if isinstance(value, (Mapping, list, tuple)):
                if depth >= self.max_depth:
                    truncated = True
                    continue
                room = self.max_nodes - enqueued
                if isinstance(value, Mapping):
                    try:
                        if len(value) > room:
                            truncated = True  # unread: sorting it would already cost too much
                            continue
                        children = [value[k] for k in sorted(k for k in value if isinstance(k, str))]
                    except Exception:  # noqa: BLE001 - a mapping that cannot be read is unread
                        truncated = True
                        continue
                else:
                    children = list(itertools.islice(value, room))
                    truncated = truncated or len(value) > room
                enqueued += len(children)
                queue.extend((child, depth + 1) for child in children)
            elif isinstance(value, str):
                if chars >= self.max_chars or scored >= self.max_items:
                    truncated = True
                    continue
                text = value[: min(self.max_string_chars, self.max_chars - chars)]
                chars += len(text)
                scored += self._string_item(request, text, items)
            elif isinstance(value, (int, Decimal, float, values.Email, values.Url, values.Path)) \
                    and not isinstance(value, bool):
                if scored >= self.max_items:
                    truncated = True
                    continue
                scored += self._scalar_item(request, value, items)
            # bool, None and anything that is no JSON value say nothing
        if truncated:
            # The unread part may hold anything, a recipient too: it counts as
            # a destination the request never named.
            items.dests.append(_Q0)
        return items

    def _scalar_item(self, request: _Request, value: Any, items: _Items) -> int:
        if isinstance(value, (values.Email, values.Url, values.Path)):
            return self._string_item(request, str(value), items)
        if isinstance(value, float):
            if not math.isfinite(value):
                return 0
            value = Decimal(repr(value))  # the decimal a JSON parser reads from its text
        if isinstance(value, Decimal):
            # `1E+999999999` is a valid Decimal whose digits would not fit in memory.
            if not value.is_finite() or abs(value.adjusted()) > values.MAX_NUMBER_DIGITS \
                    or len(value.as_tuple().digits) > values.MAX_NUMBER_DIGITS:
                return 0
        try:
            token = values.canonical_token(value)
        except ValueError:
            return 0
        # A number the request names is evidence; any other is a detail
        # (a limit, a duration) that says nothing against the action.
        if token is not None and self._named(request, token):
            items.objects.append(_Q1)
            return 1
        return 0

    def _string_item(self, request: _Request, raw: str, items: _Items) -> int:
        text = raw.strip()
        if len(text) < 3:
            return 0
        if _WHITESPACE.search(text):
            if self._named(request, text):
                items.contents.append(_Q1)
                return 1
            share = self._overlap(request, self._words(text))
            if share is None:
                return 0
            items.contents.append(share)
            return 1
        if "://" in text:
            dest = self._url(request, text)
            if dest is not None:
                items.dests.append(dest)
                return 1
        elif "@" in text[1:]:
            dest = self._email(request, text)
            if dest is not None:
                items.dests.append(dest)
                return 1
        if self._named(request, text):
            items.objects.append(_Q1)
            return 1
        if "/" in text:
            name = text.rstrip("/").rpartition("/")[2]
            if len(name) >= 3 and self._named(request, name):
                items.objects.append(_Q1)
                return 1
        share = self._overlap(request, self._words(text))
        if share is None:
            return 0
        items.objects.append(share)
        return 1

    def _domain(self, request: _Request, domain: str) -> bool:
        if domain in self.public_domains:
            return False
        return any(parent in request.domains for parent in _parents(domain))

    def _email(self, request: _Request, text: str) -> _Q | None:
        try:
            email = values.parse_email(text)
        except ValueError:
            return None
        if not _host_like(email.domain):
            return None
        if self._named(request, text):
            return _Q1
        return self._k["domain_credit"] if self._domain(request, email.domain) else _Q0

    def _url(self, request: _Request, text: str) -> _Q | None:
        try:
            url = values.parse_url(text)
        except ValueError:
            return None
        if _lower(text) in request.phrases or _lower(str(url)) in request.phrases:
            return _Q1
        host = url.host
        if host in request.domains:
            return _Q1
        if self._domain(request, host):
            return self._k["domain_credit"]
        labels = host.split(".")
        words = self._words(" ".join(label for label in labels[:-1] if label != "www"))
        words |= self._words(url.path)
        share = self._overlap(request, words)
        return _q_mul(self._k["url_word_credit"], share) if share is not None else _Q0
