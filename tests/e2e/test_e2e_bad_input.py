"""Bad sampling settings and a dead collector: the shop under `opentelemetry-instrument gunicorn` keeps answering.

Each case starts one gunicorn worker of the shop on a port the kernel picks (no fixed port, no lock)
with one bad setting, sends real requests, and checks three things: every answer is 200, the log says
what was wrong and what is used instead, and what otel-budget tallied is still exact (the scope span
in Jaeger against Django's capture). The fallbacks are the SDK's (docs/sampling.md, "Bad settings").
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from shop_e2e import Gunicorn, ShopTraces, free_port, gunicorns


# (case id, environment, what the log must say). Every case falls back to sampling every trace.
SAMPLERS = [
    ("unknown-sampler", {"OTEL_TRACES_SAMPLER": "banana"}, "Couldn't recognize sampler banana."),
    ("ratio-above-1", {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "7"},
     "Probability must be in range [0.0, 1.0]"),
    ("ratio-below-0", {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "-1"},
     "Probability must be in range [0.0, 1.0]"),
    ("ratio-not-a-number", {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "abc"},
     "Could not convert TRACES_SAMPLER_ARG to float"),
]  # fmt: skip


@pytest.fixture(scope="module")
def bad_samplers(stack_services: None, shop_database: None) -> Iterator[dict[str, Gunicorn]]:
    """A shop per SAMPLERS case, all started at once."""
    with gunicorns(*(env for _, env, _ in SAMPLERS)) as servers:
        yield {case: server for (case, _, _), server in zip(SAMPLERS, servers)}


@pytest.mark.parametrize(("case", "logged"), [(c[0], c[2]) for c in SAMPLERS], ids=[c[0] for c in SAMPLERS])
def test_a_bad_sampler_setting_falls_back_to_sampling_everything(
    case: str, logged: str, bad_samplers: dict[str, Gunicorn], traces: ShopTraces
) -> None:
    """The app answers 200, the log names the bad value, and every request's scope reaches Jaeger, exact."""
    server = bad_samplers[case]
    responses = [server.client.get("probe/queries/", pg=str(n)) for n in (1, 2, 3)]
    assert logged in server.text(), server.text()[-3000:]
    for response in responses:
        values = traces.wait(response.trace_id).request.scope.values
        assert values["db.postgresql.queries"] == response.ground_truth["pg_statements"] == response.body["pg"]


def test_an_unknown_budget_sampling_mode_counts_as_all(
    stack_services: None, shop_database: None, traces: ShopTraces
) -> None:
    """OTEL_BUDGET_SAMPLING=banana under always_off: logged, and the N+1 request's trace is still exported."""
    with gunicorns({"OTEL_TRACES_SAMPLER": "always_off", "OTEL_BUDGET_SAMPLING": "banana"}) as (server,):
        over = server.client.get("orders/")
        within = server.client.get("probe/queries/", pg="1")
        text = server.text()
    assert "OTEL_BUDGET_SAMPLING" in text and "banana" in text, text[-3000:]
    scope = traces.wait(over.trace_id).request.scope
    assert [v.metric for v in scope.violations] == ["db.repeated_queries"]
    time.sleep(1)  # past the 200 ms batch delay: had it been exported, it would be there
    assert traces.jaeger.trace(within.trace_id) == []  # within budget and not sampled: not exported


def test_a_dead_collector_does_not_slow_the_app(stack_services: None, shop_database: None) -> None:
    """OTLP to a port nobody listens on: 200s, no slower than a control exporting to the collector.

    The two run side by side and take turns request by request, so a busy machine slows both alike.
    """
    dead = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    with gunicorns({}, dead) as (control, orphan):
        times: dict[str, list[float]] = {"control": [], "dead": []}
        for _ in range(41):
            for name, server in (("control", control), ("dead", orphan)):
                t0 = time.perf_counter()
                server.client.get("probe/queries/", pg="2")
                times[name].append(time.perf_counter() - t0)
        time.sleep(1.5)  # an export attempt or two (200 ms batch delay)
        text = orphan.text()
    assert "UNAVAILABLE" in text or "Failed to export" in text, text[-3000:]
    control_ms, dead_ms = (sorted(t[1:])[20] * 1e3 for t in (times["control"], times["dead"]))  # median, warm
    print(f"median request: control {control_ms:.1f} ms, collector down {dead_ms:.1f} ms")
    assert dead_ms < 1.5 * control_ms + 5, (control_ms, dead_ms)
