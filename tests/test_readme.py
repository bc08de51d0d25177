"""The README stays true: the Quick start's two commands, CI runs the test one. (Every setting is
documented in the generated configuration reference: tests/test_docs.py.)"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert m, f"README has no section {title!r}"
    return m.group(1)


def test_quick_start_has_exactly_two_commands_and_ci_runs_the_test_one():
    blocks = re.findall(r"```sh\n(.*?)```", _section("Quick start"), re.S)
    commands = [line for b in blocks[:2] for line in b.strip().splitlines()]
    assert len(commands) == 2
    serve, test = commands
    assert "webhook-app serve" in serve and "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test in ci.splitlines()
