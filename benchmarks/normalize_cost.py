"""What a cache miss costs: six PostgreSQL statements of a Django shop normalised N times, cache emptied first.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python benchmarks/normalize_cost.py 100
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python benchmarks/normalize_cost.py 300

(difference) / (200 * 6) = instructions per normalisation. `normalize_cost.py timeit` prints µs per
normalisation instead (best of 5; wall-clock, so ±10 % or worse on a shared machine).
"""

from __future__ import annotations

import sys
import timeit

from otel_budget import normalize

STATEMENTS = (
    'SELECT "store_order"."id", "store_order"."customer_id", "store_order"."created" FROM "store_order" '
    'WHERE "store_order"."id" = 42 LIMIT 21',
    "SELECT * FROM t WHERE email = 'bob@example.com' AND pin = 123456 AND x IN (1, 2, 3)",
    'INSERT INTO "store_line" ("order_id", "sku", "qty", "price") VALUES (7, \'SKU-1\', 3, 9.99), '
    '(7, \'SKU-2\', 1, 19.5) RETURNING "store_line"."id"',
    'UPDATE "t" SET "a" = \'it\'\'s\', "b" = NULL, "c" = TRUE WHERE "id" = 5 /* traceparent=\'00-abc-def-01\' */',
    'SAVEPOINT "s140217_x3"',
    'SELECT "shop_product"."id", "shop_product"."name", "shop_product"."price" FROM "shop_product" INNER JOIN '
    '"shop_category" ON ("shop_product"."category_id" = "shop_category"."id") WHERE ("shop_category"."slug" = %s '
    'AND "shop_product"."price" > %s) ORDER BY "shop_product"."name" ASC',
)
CACHE = normalize.SQL_CACHES["postgresql"]


def one_round() -> None:
    for statement in STATEMENTS:
        CACHE.clear()
        normalize.normalize_sql(statement, "postgresql")


def main(argv: list[str]) -> int:
    if argv == ["timeit"]:
        best = min(timeit.repeat(one_round, number=3000, repeat=5)) / 3000 / len(STATEMENTS)
        print(f"{best * 1e6:.1f} µs per normalisation")
        return 0
    for _ in range(int(argv[0])):
        one_round()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
