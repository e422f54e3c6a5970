"""Exact counts through the real pipeline: N PostgreSQL statements and M MongoDB commands per request.

The shop's probe view runs exactly what it is asked for; its ground truth (Django's capture minus
BEGIN/COMMIT, a pymongo CommandListener) comes back in the response, otel-budget's tally in Jaeger.
"""

from __future__ import annotations

import pytest
from shop_e2e import ShopClient, ShopResponse, ShopTraces

# (PostgreSQL statements, MongoDB commands, inside transaction.atomic())
PROBES = [(0, 0, False), (1, 0, False), (0, 1, False), (3, 2, False), (12, 7, False), (37, 0, False),
          (0, 13, False), (6, 3, True), (0, 0, True)]  # fmt: skip


@pytest.fixture(scope="module")
def probed(shop: ShopClient) -> dict[tuple[int, int, bool], ShopResponse]:
    """Every probe requested before any test waits for Jaeger."""
    return {
        (pg, mongo, atomic): shop.get("probe/queries/", pg=str(pg), mongo=str(mongo), atomic="1" if atomic else "0")
        for pg, mongo, atomic in PROBES
    }


@pytest.mark.parametrize(("pg", "mongo", "atomic"), PROBES)
def test_exported_counts_are_exact(
    pg: int, mongo: int, atomic: bool, probed: dict[tuple[int, int, bool], ShopResponse], traces: ShopTraces
) -> None:
    """budget.db.postgresql.queries == N == Django's capture minus BEGIN/COMMIT; mongodb == M == listener."""
    response = probed[(pg, mongo, atomic)]
    truth = response.ground_truth
    span = traces.wait(response.trace_id).request
    scope = span.scope
    budget = scope.values
    assert truth["transaction_control"] == (2 if atomic else 0)  # Django logs BEGIN and COMMIT ...
    assert truth["django_captured"] == pg + truth["transaction_control"]
    assert budget.get("db.postgresql.queries", 0) == pg == truth["pg_statements"]  # ... psycopg2 sends no span
    assert budget.get("db.mongodb.queries", 0) == mongo == truth["mongo_commands"]
    assert budget["db.queries"] == pg + mongo
    assert budget["db.repeated_queries"] == max(pg, mongo)  # one statement shape per system
    assert (scope.rule, len(scope.violations)) == ("route:probe/*", 0)
