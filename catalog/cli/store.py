"""Commands over the store: tasks, models, import and export."""

from __future__ import annotations

COMMANDS: list = []
