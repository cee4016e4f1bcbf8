"""Suite-wide settings."""

from __future__ import annotations

import os

from hypothesis import settings

# CI runs the same examples every time, so a failure there is reproducible and never a roll of the dice;
# locally the search stays random to keep finding new cases.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")
