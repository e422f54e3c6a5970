"""`python3 -m stack up|down|status|build|validate-config [SERVICE...]`, the same as stack/stack.py."""

from __future__ import annotations

import sys

from .commands import main

sys.exit(main())
