from __future__ import annotations

import os

from django.apps import AppConfig


class ReliabilityConfig(AppConfig):
    name = "reliability_app"

    def ready(self) -> None:
        from reliability_app import faults

        if os.environ.get("RELIABILITY_FAULTS") == "1":
            faults.install_faults()
        if os.environ.get("RELIABILITY_CAPTURE_STATEMENT") == "1":
            faults.capture_mongo_statements()
        if os.environ.get("RELIABILITY_STATE_AT_FORK") == "1":
            faults.leave_state_for_fork()
