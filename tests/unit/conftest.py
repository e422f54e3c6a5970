"""Fixtures of the unit tests; the helpers behind them are in tracing_kit.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tracing_kit import Tracing, make_tracing


@pytest.fixture
def tracing() -> Iterator[Tracing]:
    tracing = make_tracing()
    yield tracing
    tracing.provider.shutdown()
