"""The `stack` package's pure parts: the build table, the BSON codec, service selection, the command line."""

from __future__ import annotations

import os

import pytest
from stack import builds, commands, services, wire
from stack.progress import StackError, fmt_secs


def test_every_service_binary_is_in_the_build_table() -> None:
    """FerretDB, Jaeger and the collector are built; the collector builder is built first, for the collector."""
    assert [b.name for b in builds.GO_BINARIES if b.service] == ["ferretdb", "jaeger", "collector"]
    assert builds.BUILDS["collector"].requires == ("ocb",)
    assert not builds.BUILDS["ocb"].service


def test_binary_names_carry_the_version_and_the_builder_config_hash() -> None:
    """The cached file names docs/stack.md lists."""
    assert os.path.basename(builds.binary("ferretdb")) == "ferretdb-v1.24.2"
    assert os.path.basename(builds.binary("ocb")) == "ocb-v0.161.0"
    expected = f"otelcol-budget-v0.161.0-{builds.sha12(builds.BUILDER_CONFIG)}"
    assert os.path.basename(builds.collector_bin()) == expected


def test_bson_round_trip() -> None:
    """What the encoder writes, the decoder reads back."""
    doc = {"ping": 1, "$db": "admin", "ok": True}
    assert wire.bson_decode(wire.bson_encode(doc)) == doc


def test_pick_keeps_start_order_and_refuses_unknown_names() -> None:
    """Services come in start order whatever the order asked; an unknown name is an error naming the choices."""
    assert [s.name for s in commands.pick(["prometheus", "postgres"])] == ["postgres", "prometheus"]
    assert commands.pick([]) == services.SERVICES
    with pytest.raises(StackError, match="choose from postgres, redis"):
        commands.pick(["mysql"])


def test_fmt_secs() -> None:
    """Seconds under a minute, minutes and zero-padded seconds above."""
    assert (fmt_secs(42.4), fmt_secs(185)) == ("42s", "3m05s")
