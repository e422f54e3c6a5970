"""Where the stack keeps its state, binaries and configuration, read from the environment once."""

from __future__ import annotations

import os

__all__ = [
    "AGENT_CONFIG",
    "ALERTS_FILE",
    "BIN_DIR",
    "BUILDER_CONFIG",
    "CACHE_DIR",
    "COLLECTOR_CONFIG",
    "GATEWAY_CONFIG",
    "HOST",
    "JAEGER_CONFIG",
    "LOG_DIR",
    "PG_BIN",
    "PROMETHEUS_TEMPLATE",
    "REPO_DIR",
    "SRC_DIR",
    "STACK_DIR",
]

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STACK_DIR = os.path.abspath(os.environ.get("OTEL_BUDGET_STACK_DIR") or "/tmp/otel-budget-stack")
CACHE_DIR = os.path.abspath(
    os.environ.get("OTEL_BUDGET_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "otel-budget")
)
BIN_DIR = os.path.join(CACHE_DIR, "bin")
SRC_DIR = os.path.join(CACHE_DIR, "src")
LOG_DIR = os.path.join(STACK_DIR, "logs")
HOST = "127.0.0.1"

PG_BIN = "/usr/lib/postgresql/15/bin"

COLLECTOR_CONFIG = os.path.join(REPO_DIR, "collector-config", "config.yaml")
AGENT_CONFIG = os.path.join(REPO_DIR, "collector-config", "agent.yaml")
GATEWAY_CONFIG = os.path.join(REPO_DIR, "collector-config", "gateway.yaml")
BUILDER_CONFIG = os.path.join(REPO_DIR, "collector-config", "builder-config.yaml")
JAEGER_CONFIG = os.path.join(REPO_DIR, "stack", "jaeger.yaml")
PROMETHEUS_TEMPLATE = os.path.join(REPO_DIR, "stack", "prometheus.yml")
ALERTS_FILE = os.path.join(REPO_DIR, "dashboards", "alerts.yml")
