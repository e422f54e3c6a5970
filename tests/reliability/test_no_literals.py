"""Privacy: nothing we add to a span carries a literal value, a request header or a request body.

Real statements with e-mail addresses and numbers inlined go through the real PostgreSQL and
FerretDB under the real psycopg2 and pymongo instrumentations (pymongo with `capture_statement=True`,
so filters with their values reach the spans), inside requests that also carry personal data in
headers and body. Each statement is repeated past the N+1 limit, so its normalised text is exported
as `budget.statement`. The instrumentations' own attributes do hold the values (checked, so the test
cannot pass vacuously); our `budget.*` attributes and `budget.exceeded` events must not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

import reliability_kit as kit

STATEMENT_MAX = 200
# Every value the requests below contain that must never appear in what otel-budget adds.
PRIVATE = re.compile(r"private|secret|@|4242|987654|31337|271828|5150|6160|4111 ?1111|Reilly|VIP|vip|Bearer")
HEADERS = {
    "X-Customer-Email": "grace.private@example.com",
    "Authorization": "Bearer secret-token-4242",
    "Cookie": "sessionid=secret-987654",
    "Content-Type": "application/json",
}
BODY = json.dumps({"email": "heidi.private@example.com", "card": "4111 1111 1111 1111"}).encode()
CASES = {  # case -> (statement executions, MongoDB filter executions): the larger one is the N+1 exported
    "plain": (7, 1),
    "escaped_quote": (7, 1),
    "backslash_literal": (7, 1),
    "dashes_in_literal": (7, 1),
    "slash_star_in_literal": (7, 1),
    "long": (7, 1),
    "mongo_filter": (1, 8),
}


def ours(span: kit.JaegerSpan) -> dict[str, str]:
    """Everything otel-budget added to the span: `budget.*` attributes and `budget.exceeded` events."""
    added = {k: str(v) for k, v in span.attributes.items() if k.startswith("budget.")}
    for number, (name, fields) in enumerate(span.events):
        if name == "budget.exceeded":
            added.update({f"event{number}.{k}": str(v) for k, v in fields.items()})
    return added


@pytest.fixture(scope="module")
def traces(shop_db: None) -> dict[str, list[kit.JaegerSpan]]:
    """Every case's request, sent once; its spans as Jaeger holds them."""
    web, _, _ = kit.SharedShop.get()
    sent = {}
    for case, (sql, mongo) in CASES.items():
        statement_case = "plain" if case == "mongo_filter" else case
        response = kit.get(
            f"{web.url}/rel/privacy/?case={statement_case}&sql={sql}&mongo={mongo}", method="POST", headers=HEADERS, body=BODY
        )
        assert response.status == 200, response.body[:300]
        sent[case] = response
    return {
        case: kit.wait_for(
            lambda: kit.trace_spans(response.trace_id),
            lambda found: any(s.is_scope for s in found) and len(found) >= 1 + sum(CASES[case]),
            timeout=45,
            what=f"the {case} request's spans",
        )
        for case, response in sent.items()
    }


@pytest.mark.parametrize("case", CASES)
def test_nothing_we_add_carries_literals_headers_or_bodies(
    case: str, traces: dict[str, list[kit.JaegerSpan]], figure: Callable[[str, str], None]
) -> None:
    """Statement `case` past the N+1 limit, in a request with personal data in headers and body."""
    spans = traces[case]
    scope = next(s for s in spans if s.is_scope)
    added = {f"{span.name}/{key}": value for span in spans for key, value in ours(span).items()}
    statement = next(
        (str(f.get("budget.statement")) for name, f in scope.events if name == "budget.exceeded" and "budget.statement" in f), None
    )
    raw = {
        system: " ".join(str(s.attributes.get("db.statement", "")) for s in spans if s.attributes.get("db.system") == system)
        for system in ("postgresql", "mongodb")
    }
    leaks = {key: value for key, value in added.items() if PRIVATE.search(value)}
    figure(f"privacy: {case}", f"budget.statement = {statement!r} ({len(statement or '')} chars); leaks: {leaks or 'none'}")
    # The instrumentations did put the personal data on their spans: the test is not vacuous.
    assert all(PRIVATE.search(text) for text in raw.values()), f"raw statements without the values: {raw}"
    assert statement is not None, "the N+1 event carries the normalised statement"
    assert leaks == {}
    assert len(statement) <= STATEMENT_MAX
    assert "?" in statement
    if case == "long":
        assert len(statement) == STATEMENT_MAX and statement.endswith("…"), "cut to the cap"
    assert not any(v in value for value in added.values() for v in HEADERS.values()), "no request header"
