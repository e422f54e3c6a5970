"""pytest plugin: fail tests whose requests, tasks or scopes exceed their budgets."""

from __future__ import annotations
