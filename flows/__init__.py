"""Prefect flows over the `pipeline` and `indexes` libraries. Orchestration only: no ML or storage logic here."""

import os

# Offline by default: no telemetry. A user's own settings win.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
