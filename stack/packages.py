"""Debian packages the stack needs (PostgreSQL 15, Redis, Prometheus), installed without their daemons,
and those the tests need beside it (Chromium, to look at `otel-budget report --html`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from .progress import StackError, fmt_secs, log, run_logged
from .settings import PG_BIN

__all__ = ["TEST_TOOLS", "apt_install", "ensure_packages", "missing_packages"]

# Not services: what the tests run beside them (`stack.py tools`, `make test`).
TEST_TOOLS = ["chromium"]
APT_ESTIMATE = "~1 min"  # first install, measured like the Go builds (docs/stack.md)
_apt_updated = False


def _root_prefix() -> list[str]:
    """`sudo -n` when not root; raises when neither is available."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo"):
        return ["sudo", "-n"]
    raise StackError("installing Debian packages needs root (or sudo); run as root or install them yourself")


def apt_install(packages: list[str], services: list[str]) -> None:
    """Install Debian packages (once), without letting their init scripts start daemons."""
    global _apt_updated
    t = time.monotonic()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    pre = _root_prefix()
    policy = "/usr/sbin/policy-rc.d"
    own_policy = not os.path.exists(policy) and os.geteuid() == 0
    if own_policy:  # keep the packaged daemons from grabbing our ports
        with open(policy, "w") as f:
            f.write("#!/bin/sh\n# written by otel-budget stack/stack.py during apt-get install\nexit 101\n")
        os.chmod(policy, 0o755)
    try:
        if not _apt_updated:
            log("apt-get update (once)")
            run_logged(pre + ["apt-get", "update", "-q"], "apt", env=env)
            _apt_updated = True
        log(f"apt-get install {' '.join(packages)} (first run only, {APT_ESTIMATE})")
        run_logged(pre + ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                          "-o", "Dpkg::Options::=--force-confold"] + packages, "apt", env=env)
    finally:
        if own_policy:
            os.unlink(policy)
    # If a package's daemon started anyway, stop it: the stack runs its own instances.
    for svc in services:
        if os.path.exists(f"/etc/init.d/{svc}"):
            subprocess.run(pre + ["service", svc, "stop"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
    log(f"installed {' '.join(packages)} in {fmt_secs(time.monotonic() - t)}")


def missing_packages(names: list[str]) -> tuple[list[str], list[str]]:
    """The packages the services `names` still need, and the init scripts those packages bring."""
    need, svcs = [], []
    if "postgres" in names and not os.path.exists(os.path.join(PG_BIN, "postgres")):
        need += ["postgresql-15"]
        svcs += ["postgresql"]
    if "redis" in names and not shutil.which("redis-server"):
        need += ["redis-server"]
        svcs += ["redis-server"]
    if "prometheus" in names and not (shutil.which("prometheus") and shutil.which("promtool")):
        need += ["prometheus"]
        svcs += ["prometheus"]
    if "chromium" in names and not shutil.which("chromium"):
        need += ["chromium"]  # headless, for tests/e2e/test_e2e_html_report.py; no daemon
    return need, svcs


def ensure_packages(names: list[str]) -> None:
    """Install what the services `names` need and is missing."""
    need, svcs = missing_packages(names)
    if need:
        apt_install(need, svcs)
