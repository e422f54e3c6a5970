"""Instructions per scope at a 1 % head sample: plain OTel at 100 % and 1 %, otel-budget at 1 % (for callgrind).

The companion of `instructions.py` for docs/benchmarks.md, "At 1 % head sampling". One scope is
`per_span.one_scope` (1 SERVER + 20 DB spans); spans go through a BatchSpanProcessor to an exporter
that encodes them as OTLP protobuf and drops the bytes, so a sampled scope pays what an OTLP export
costs in the process (the encoding) without the network. Trace ids come from a seeded generator,
so every configuration samples the same scopes:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python benchmarks/sampling_instructions.py "otel 1%" 200
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python benchmarks/sampling_instructions.py "otel 1%" 600

(difference) / 400 = instructions per scope. With a third argument `cpu`, it prints the process's CPU
seconds per scope instead (all threads, the exporter's included; `time.process_time`), for a loaded
machine where callgrind is too slow: run the configurations alternately, several rounds.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult  # noqa: E402
from opentelemetry.sdk.trace.id_generator import IdGenerator  # noqa: E402
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased  # noqa: E402
from per_span import QUEUE_SIZE, one_scope  # noqa: E402

import otel_budget  # noqa: E402

RATIO = 0.01
WARM_UP = 300
# name -> (sampler, otel-budget installed)
CONFIGS: dict[str, tuple[Sampler, bool]] = {
    "otel 100%": (ParentBased(ALWAYS_ON), False),
    "otel 1%": (ParentBased(TraceIdRatioBased(RATIO)), False),
    "otel+budget 1%": (ParentBased(TraceIdRatioBased(RATIO)), True),
    "otel+budget 100%": (ParentBased(ALWAYS_ON), True),
}


class EncodingExporter(SpanExporter):
    """Encodes every batch as the OTLP exporters do (protobuf), then drops it."""

    def __init__(self) -> None:
        self.size = 0

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        self.size += len(encode_spans(spans).SerializePartialToString())
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class SeededIds(IdGenerator):
    """The SDK's random ids from a seeded generator: the same trace ids, so the same sampled scopes, every run."""

    def __init__(self, seed: int = 12) -> None:
        self._random = random.Random(seed)

    def generate_span_id(self) -> int:
        return self._random.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self._random.getrandbits(128) or 1


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or argv[0] not in CONFIGS:
        print(f"usage: sampling_instructions.py CONFIG SCOPES [cpu]; CONFIG one of {sorted(CONFIGS)}", file=sys.stderr)
        return 2
    sampler, budget = CONFIGS[argv[0]]
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    provider = TracerProvider(sampler=sampler, id_generator=SeededIds())
    exporter = EncodingExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=QUEUE_SIZE))
    if budget:  # every request tallied (OTEL_BUDGET_SAMPLING=all), histograms on, as under opentelemetry-instrument
        otel_budget.install(provider, meter_provider=meter_provider)
    tracer = provider.get_tracer("bench")
    for _ in range(WARM_UP):
        one_scope(tracer)
    provider.force_flush()
    cpu0 = time.process_time()
    for _ in range(int(argv[1])):
        one_scope(tracer)
    provider.force_flush()  # the exporter thread's encoding of these scopes, in the same process time
    cpu = time.process_time() - cpu0
    provider.shutdown()
    meter_provider.shutdown()
    if argv[2:] == ["cpu"]:
        print(f"{argv[0]}|{cpu / int(argv[1]) * 1e6:.1f}")
    print(f"{argv[0]}: {exporter.size} bytes of OTLP encoded", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
