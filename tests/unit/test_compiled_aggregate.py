"""`_speedups.aggregate` against its Python twin `_metrics.aggregate_values`: the same states, value for value.

Both are pure functions over dicts and lists, so they are compared directly in this process (the compiled
module is imported whatever `OTEL_BUDGET_COMPILED` says: that setting picks the one the processor uses).
tests/unit/test_metrics_aggregation.py checks whichever is in use against the SDK's own `Histogram.record`.
"""

from __future__ import annotations

import copy
import math
import random
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from otel_budget import _metrics, _speedups  # built by `make venv`; an ImportError here is a failure, not a skip
from otel_budget._metrics import aggregate_values, bucket_bounds

COUNTS, MS, MIB = bucket_bounds("{query}"), bucket_bounds("ms"), bucket_bounds("MiB")
SLOTS: dict[str, Any] = {
    "db.queries": COUNTS, "duration_ms": MS, "memory.growth_mb": MIB, "cpu_ms": MS,
    "tasks.enqueued": None,  # no histogram
    "external.calls": "a Histogram",  # recorded through the SDK: handed back
}  # fmt: skip


def both(states: dict[str, list[Any]], values: dict[str, Any], slots: dict[str, Any] = SLOTS) -> tuple[Any, Any]:
    """(compiled states, recorded), (Python states, recorded) after aggregating `values` into copies of `states`."""
    results = []
    for aggregate in (_speedups.aggregate, aggregate_values):
        mine = copy.deepcopy(states)
        recorded: list[tuple[str, Any]] = []
        aggregate(mine, values, slots, recorded)
        results.append((mine, recorded))
    return results[0], results[1]


def same(ours: Any, theirs: Any) -> None:
    """Equal, and of the same types (an int sum stays an int), the start times aside."""
    (our_states, our_recorded), (their_states, their_recorded) = ours, theirs
    assert our_recorded == their_recorded
    assert our_states.keys() == their_states.keys()
    for metric, ours_state in our_states.items():
        theirs_state = their_states[metric]
        assert ours_state[0] == theirs_state[0], metric
        for mine, theirs_value in zip(ours_state[1:4], theirs_state[1:4]):
            assert type(mine) is type(theirs_value) and (mine == theirs_value or (mine != mine and theirs_value != theirs_value))
        assert abs(ours_state[4] - theirs_state[4]) < 5_000_000_000  # both time.time_ns(), a moment apart


def a_value(rng: random.Random, bounds: tuple[float, ...]) -> Any:
    pick = rng.random()
    if pick < 0.25:
        return bounds[rng.randrange(len(bounds))]  # exactly on a bound (bisect_left puts it in that bucket)
    if pick < 0.35:
        return float(bounds[rng.randrange(len(bounds))])
    if pick < 0.45:
        return -rng.random() * 5 if rng.random() < 0.5 else -rng.randrange(1, 9)
    if pick < 0.55:
        return rng.randrange(0, 10_000)
    if pick < 0.6:
        return math.inf if rng.random() < 0.5 else -math.inf
    if pick < 0.62:
        return math.nan
    return rng.random() * bounds[-1] * 1.5


@pytest.mark.parametrize("seed", range(5))
def test_random_scopes_give_the_same_states(seed: int) -> None:
    rng = random.Random(seed)
    compiled_states: dict[str, list[Any]] = {}
    python_states: dict[str, list[Any]] = {}
    for _ in range(400):
        values = {metric: a_value(rng, bounds if isinstance(bounds, tuple) else COUNTS) for metric, bounds in SLOTS.items()
                  if rng.random() < 0.85}  # fmt: skip
        for aggregate, states in ((_speedups.aggregate, compiled_states), (aggregate_values, python_states)):
            recorded: list[tuple[str, Any]] = []
            aggregate(states, values, SLOTS, recorded)
            assert recorded == ([("external.calls", values["external.calls"])] if "external.calls" in values else [])
    same((compiled_states, []), (python_states, []))
    assert sum(compiled_states["duration_ms"][0]) > 300  # most scopes were counted, not dropped


@pytest.mark.parametrize(
    "value",
    [0, 0.0, -0.0, 1, 20, 21, 5000, 5001, 2**53 + 1, 2**70, -(2**70), True, False, 0.5, 1e300, -1e-300,
     math.inf, -math.inf, math.nan, Decimal("2.5"), Decimal("-3"), Fraction(7, 2)],
)  # fmt: skip
def test_edge_values_as_the_python_does(value: Any) -> None:
    existing: dict[str, list[Any]] = {"db.queries": [[0] * (len(COUNTS) + 1), 0, math.inf, -math.inf, 1]}
    values = {"db.queries": value, "duration_ms": value, "memory.growth_mb": value}
    same(*both(existing, values))
    same(*both({}, values))


def test_existing_states_are_added_to() -> None:
    states: dict[str, list[Any]] = {}
    aggregate_values(states, {"duration_ms": 12.5, "db.queries": 3}, SLOTS, [])
    same(*both(states, {"duration_ms": 0.25, "db.queries": 40}))
    ours, _ = both(states, {"duration_ms": 0.25, "db.queries": 40})
    assert ours[0]["db.queries"][1:4] == [43, 3, 40] and ours[0]["duration_ms"][1:4] == [12.75, 0.25, 12.5]


@pytest.mark.parametrize(
    ("values", "slots", "error"),
    [
        ({"nowhere": 1}, SLOTS, KeyError),  # a metric without a slot
        ({"duration_ms": "12"}, SLOTS, TypeError),  # not a number
        ({"duration_ms": 1}, {"duration_ms": ("a", "b")}, TypeError),  # bounds that do not compare
    ],
)
def test_bad_input_raises_the_same_errors(values: dict[str, Any], slots: dict[str, Any], error: type) -> None:
    for aggregate in (_speedups.aggregate, aggregate_values):
        with pytest.raises(error):
            aggregate({}, values, slots, [])


def test_a_broken_state_raises_instead_of_crashing() -> None:
    for state in (["not", "a", "state", "list"], [[0], 0, 0.0, 0.0, 1], "nope"):
        with pytest.raises((TypeError, IndexError)):
            _speedups.aggregate({"duration_ms": state}, {"duration_ms": 99999.0}, SLOTS, [])


def test_the_compiled_one_is_used_for_dicts_when_it_is_on() -> None:
    from otel_budget.settings import Settings

    expected = _speedups.aggregate if Settings.from_env().compiled else aggregate_values
    assert _metrics._aggregate_values is expected


# -- the two loops of a scope's end: tally.put_counts (counts, ns as ms) and spanformat.prefixed (attribute keys)
@pytest.mark.parametrize(
    "count",
    [0, 1, 499, 500, 501, 1500, 2500, 123_456_789, -1500, -2500, 2**53, 2**53 + 3, 2**70, -(2**64), True, 1.5e9, 2.5],
)  # fmt: skip
def test_put_counts_as_the_python_does(count: Any) -> None:
    from otel_budget.tally import _ms, put_counts

    metrics, timed = ("db.queries", "db.duration_ms", "tasks.enqueued"), (False, True, 0)
    for counts in ([count, count, count], [count], []):
        ours: dict[str, Any] = {"duration_ms": 1.0}
        theirs: dict[str, Any] = {"duration_ms": 1.0}
        _speedups.put_counts(ours, metrics, timed, list(counts), _ms)
        put_counts(theirs, metrics, timed, list(counts), _ms)
        assert list(ours.items()) == list(theirs.items())
        assert [type(value) for value in ours.values()] == [type(value) for value in theirs.values()]


def test_put_counts_rounds_half_to_even_like_round() -> None:
    from otel_budget.tally import _ms

    values: dict[str, Any] = {}
    counts = [500, 1500, 2500, 3500, 1_000_500, 999_999_500]  # ns whose µs are exactly halfway
    _speedups.put_counts(values, tuple(map(str, range(6))), (True,) * 6, counts, _ms)
    assert list(values.values()) == [_ms(ns) for ns in counts] == [0.0, 0.002, 0.002, 0.004, 1.0, 1000.0]


def test_put_counts_errors_are_raised() -> None:
    from otel_budget.tally import _ms

    with pytest.raises(TypeError):
        _speedups.put_counts({}, ("db.duration_ms",), (True,), ["12"], _ms)  # `_ms("12")` raises it too
    with pytest.raises(TypeError):
        _speedups.put_counts({}, ("a",), (False,), ("not", "a list"), _ms)
    with pytest.raises(TypeError):
        _speedups.put_counts({}, ("a", [1]), (False, False), [1, 2], _ms)  # an unhashable metric


def test_prefixed_as_the_python_does() -> None:
    from otel_budget.spanformat import _ATTRIBUTE_KEYS, _key, prefixed

    values = {"db.queries": 3, "duration_ms": 1.25, "db.cassandra.queries": 2, "new.metric": 0, "cpu_ms": -0.0}
    keys = {**_ATTRIBUTE_KEYS, "db.queries": ""}  # an empty key is made again, as `or` does
    made: list[str] = []

    def make_key(metric: str) -> str:
        made.append(metric)
        return _key(metric)

    ours = _speedups.prefixed(values, keys, make_key)
    theirs = prefixed(values, keys, make_key)
    assert list(ours.items()) == list(theirs.items())
    assert ours["budget.db.queries"] == 3 and ours["budget.new.metric"] == 0
    assert made == ["db.queries", "db.cassandra.queries", "new.metric"] * 2
    with pytest.raises(ZeroDivisionError):
        _speedups.prefixed({"x": 1}, {}, lambda metric: 1 / 0)
