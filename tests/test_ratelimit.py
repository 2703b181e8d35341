from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.control.ratelimit import TokenBucket


def test_burst_then_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.allow(0.05)  # half a token
    assert bucket.allow(0.1)
    assert not bucket.allow(0.1)
    assert [bucket.allow(10.0) for _ in range(4)] == [True, True, True, False]  # capped


def test_clock_going_backwards_grants_nothing() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=5.0)
    assert bucket.allow(5.0)
    assert not bucket.allow(1.0)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1, now=0)


@given(st.lists(st.floats(0, 0.5), max_size=300), st.integers(1, 50), st.integers(1, 100))
def test_never_more_than_burst_plus_rate_times_time(
    gaps: list[float], rate: int, burst: int
) -> None:
    bucket = TokenBucket(rate=rate, burst=burst, now=0.0)
    now = 0.0
    allowed = 0
    for gap in gaps:
        now += gap
        allowed += bucket.allow(now)
    assert allowed <= burst + rate * now + 1e-9
