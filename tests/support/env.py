"""The start of an environment a test builds from nothing for a child process."""

from __future__ import annotations

import os


def base_env(path: str = "/usr/bin:/bin") -> dict[str, str]:
    """PATH and, when the run measures coverage, coverage's own variable (set by [tool.coverage.run]
    patch = subprocess), so that the child reports the lines it ran too."""
    env = {"PATH": path}
    if "COVERAGE_PROCESS_CONFIG" in os.environ:
        env["COVERAGE_PROCESS_CONFIG"] = os.environ["COVERAGE_PROCESS_CONFIG"]
    return env
