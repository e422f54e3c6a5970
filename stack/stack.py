#!/usr/bin/env python3
"""`python3 stack/stack.py up|down|status|build|validate-config [SERVICE...]`: runs the `stack` package.

`make stack` and the docs use this path; the code is in stack/commands.py and its neighbours.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # Run as a script, sys.path[0] is stack/ itself (where `import stack` would find this file):
    # the package is imported from the repository root instead.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    from stack.commands import main

    sys.exit(main())
