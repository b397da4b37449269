"""Numbers at the store boundary, on every backend (memory, SQLite file, real redis-server).

Before: settling ``tokens = 2**63`` wrapped a Redis counter to -2^63 (the next
20 of 20 operations were granted against a 1,000-token limit) and raised
``OverflowError`` on SQLite (the usage was lost). Now every store refuses an
amount outside [0, MAX_AMOUNT] with a ValueError before changing anything, and
a counter saturates at COUNTER_CAP instead of wrapping.
"""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardpool.policy.bounds import COUNTER_CAP, MAX_AMOUNT
from guardpool.store.base import BudgetStore

from .test_store_conformance import item, store  # noqa: F401  (the parametrized fixture)

_EDGES = [0, 1, MAX_AMOUNT - 1, MAX_AMOUNT, MAX_AMOUNT + 1, 2**52, 2**53, 2**63 - 1, 2**63, -1]
amounts = st.one_of(
    st.integers(0, MAX_AMOUNT),
    st.sampled_from(_EDGES),
    st.integers(-(2**70), 2**70),
)


@pytest.mark.parametrize("bad", [MAX_AMOUNT + 1, 2**63, 2**63 - 1, -1, 2**200])
def test_out_of_range_settles_are_refused_and_change_nothing(
    store: BudgetStore,  # noqa: F811
    bad: int,
) -> None:
    it = item(10, 1000, dimension="tokens")
    assert store.reserve("a", [it], 60_000).ok
    with pytest.raises(ValueError, match="tokens"):
        store.settle("a", {"tokens": bad})
    # nothing changed: the reservation is still live and settles normally afterwards
    state = store.states([it])[0]
    assert (state.used, state.reserved) == (0, 10)
    answer = store.settle("a", {"tokens": 999})
    assert answer.ok and answer.states[0].used == 999
    # and the budget is enforced: 999 + 10 > 1000
    assert not store.reserve("b", [it], 60_000).ok


@pytest.mark.parametrize("field", ["amount", "headroom", "limit"])
def test_out_of_range_reservations_are_refused(store: BudgetStore, field: str) -> None:  # noqa: F811
    values = {"amount": 1, "headroom": 0, "limit": 10, field: 2**63}
    it = item(values["amount"], values["limit"], headroom=values["headroom"])
    with pytest.raises(ValueError, match=field):
        store.reserve("a", [it], 60_000)
    assert store.states([item()])[0].reserved == 0


@pytest.mark.parametrize("window_ms", [0, 3_600_000])
def test_counters_saturate_at_the_cap_and_refuse_past_it(
    store: BudgetStore,  # noqa: F811
    window_ms: int,
) -> None:
    unchecked = item(0, MAX_AMOUNT, dimension="tokens", window_ms=window_ms, check=False)
    used = []
    for i in range(6):
        assert store.reserve(f"r{i}", [unchecked], 60_000).ok
        used.append(store.settle(f"r{i}", {"tokens": MAX_AMOUNT}).states[0].used)
    assert (
        used == [1 * MAX_AMOUNT, 2 * MAX_AMOUNT, 3 * MAX_AMOUNT, 4 * MAX_AMOUNT] + [COUNTER_CAP] * 2
    )
    # even a warn-only (unchecked) item refuses a reservation the counter cannot hold
    one_more = item(1, MAX_AMOUNT, dimension="tokens", window_ms=window_ms, check=False)
    assert not store.reserve("over", [one_more], 60_000).ok
    # and a checked one refuses, as it would at any counter over its limit
    checked = item(0, MAX_AMOUNT, dimension="tokens", window_ms=window_ms)
    assert not store.reserve("checked", [checked], 60_000).ok


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(amounts, min_size=1, max_size=10), window=st.sampled_from([0, 60_000]))
def test_random_settles_never_decrease_or_wrap_a_counter(
    store: BudgetStore,  # noqa: F811
    steps: list[int],
    window: int,
) -> None:
    key = uuid.uuid4().hex  # one fresh counter per example: the store outlives examples
    unchecked = item(0, 1000, key=key, dimension="tokens", window_ms=window, check=False)
    probe = item(1, 1000, key=key, dimension="tokens", window_ms=window)
    expected = 0
    for n, amount in enumerate(steps):
        rid = f"{key}-{n}"
        assert store.reserve(rid, [unchecked], 60_000).ok
        if 0 <= amount <= MAX_AMOUNT:
            answer = store.settle(rid, {"tokens": amount})
            expected = min(expected + amount, COUNTER_CAP)
            assert answer.ok and answer.states[0].used == expected
        else:
            with pytest.raises(ValueError):
                store.settle(rid, {"tokens": amount})
            assert store.release(rid)
        state = store.states([unchecked])[0]
        assert state.used == expected and 0 <= state.used <= COUNTER_CAP
        assert state.reserved == 0
        granted = store.reserve(f"{rid}-probe", [probe], 60_000).ok
        assert granted is (expected + 1 <= 1000), (expected, amount)
        if granted:
            assert store.release(f"{rid}-probe")
