"""Per span in instructions: N scopes (1 SERVER + 20 DB spans) under one configuration, for callgrind.

Wall-clock ratios on a shared machine move by +-10 % between identical runs; instruction counts repeat
to a fraction of a per cent. Run each configuration at two sizes under callgrind and take the
difference, so interpreter start-up and imports cancel:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python benchmarks/instructions.py otel 2000
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python benchmarks/instructions.py otel 4000

`benchmarks/run.py --only instructions` does that for every configuration and prints the ratios.
The set-up is `per_span.make_provider`'s: the SDK with a BatchSpanProcessor and a null exporter, SDK
metrics with a reader, our processor after the exporter's (as `opentelemetry-instrument` orders them).
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from per_span import CONFIGS, make_provider, one_scope  # noqa: E402

WARM_UP = 300  # scopes before the measured ones: statement caches and instruments made


def main(argv: list[str]) -> int:
    """`instructions.py CONFIG SCOPES`: run SCOPES scopes after the warm-up, then shut down."""
    if len(argv) != 2 or argv[0] not in CONFIGS:
        print(f"usage: instructions.py CONFIG SCOPES; CONFIG one of {sorted(CONFIGS)}", file=sys.stderr)
        return 2
    config, scopes = argv[0], int(argv[1])
    provider, meter_provider = make_provider(config)
    tracer = provider.get_tracer("bench")
    for _ in range(WARM_UP + scopes):
        one_scope(tracer)
    provider.shutdown()
    meter_provider.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
