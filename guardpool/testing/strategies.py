"""Hypothesis strategies of hostile text for a regex or a guard.

    from hypothesis import given
    from guardpool.testing import adversarial_texts

    @given(adversarial_texts(pattern=r"^(\\w+\\s?)*$"))
    def test_words(text): ...

    @given(adversarial_texts(guard="myproject.guards:check_sql"))
    def test_check_sql(text): ...

Drawn from, in proportion:

- **ReDoS shapes**: the pumping strings ``lint`` derives from the pattern (or from
  every ``re`` pattern in the guard's module), pumped a drawn number of times
  and ended by a character that makes the match fail;
- **huge repeats** of the patterns' literal characters (up to ``max_repeat``);
- **Unicode edge cases**: zero-width and bidi controls, combining marks, BOM,
  NUL, astral characters, case folding that changes length;
- **lone surrogates** spliced into text (``allow_surrogates=False`` drops them);
- arbitrary text, so shrinking has somewhere simple to go.

Requires ``hypothesis`` (``pip install 'guardpool[fuzz]'``).
"""

from __future__ import annotations

from hypothesis import strategies as st

from guardpool.analysis.astscan import scan_module
from guardpool.analysis.fuzzgen import EDGE_CASES, literal_chars
from guardpool.analysis.redos import analyse

_FAILERS = ("!", "\x00", "~", "\n", "\u2028")
_SURROGATES = st.integers(min_value=0xD800, max_value=0xDFFF).map(chr)


def _patterns(pattern: str | None, guard: str | None) -> list[str]:
    found = [pattern] if pattern is not None else []
    if guard is not None:
        module = guard.partition(":")[0]
        found += [use.pattern for use in scan_module(module) if not use.isbytes]
    return found


def adversarial_texts(
    pattern: str | None = None,
    *,
    guard: str | None = None,
    max_repeat: int = 50_000,
    allow_surrogates: bool = True,
) -> st.SearchStrategy[str]:
    """Hostile text aimed at ``pattern`` and/or the ``re`` patterns of ``guard``'s module."""
    if max_repeat < 1:
        raise ValueError("adversarial_texts: max_repeat must be >= 1")
    patterns = _patterns(pattern, guard)
    parts: list[st.SearchStrategy[str]] = []
    pumps = [f for p in patterns for f in analyse(p)]
    if pumps:
        parts.append(
            st.builds(
                lambda finding, n, failer: finding.attack(n) + failer,
                st.sampled_from(pumps),
                st.integers(min_value=1, max_value=min(max_repeat, 5_000)),
                st.sampled_from(_FAILERS),
            )
        )
    chars = sorted({c for p in patterns for c in literal_chars(p)}) or ["a", " ", "0"]
    parts.append(
        st.builds(
            lambda c, n, failer: c * n + failer,
            st.sampled_from(chars),
            st.integers(min_value=1, max_value=max_repeat),
            st.sampled_from(("", *_FAILERS)),
        )
    )
    edge = [e for e in EDGE_CASES if allow_surrogates or not _has_surrogate(e)]
    parts.append(st.sampled_from(edge))
    parts.append(st.lists(st.sampled_from(edge), min_size=2, max_size=8).map("".join))
    if allow_surrogates:
        parts.append(
            st.builds(
                lambda text, s, at: text[: at % (len(text) + 1)] + s + text[at % (len(text) + 1) :],
                st.text(max_size=64),
                _SURROGATES,
                st.integers(min_value=0, max_value=64),
            )
        )
    parts.append(st.text(max_size=256))
    return st.one_of(*parts)


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)
