"""The README stays true and short: the Quick start's two commands, CI runs the test one, at most
200 lines with the go-live guide on its first screen, and every link it has leads somewhere. (Every
setting is documented in the generated configuration reference: tests/test_docs.py.)"""

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


def test_the_readme_is_short_and_sends_a_newcomer_to_the_go_live_guide():
    lines = README.splitlines()
    assert len(lines) <= 200
    first_screen = "\n".join(lines[:24])
    assert "](docs/howto/go-live.md)" in first_screen


def test_every_relative_link_in_the_readme_and_contributing_exists():
    for name in ("README.md", "CONTRIBUTING.md", "sandbox/README.md"):
        text = (ROOT / name).read_text(encoding="utf-8")
        base = (ROOT / name).parent
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert (base / target).exists(), f"{name} links to {target}, which does not exist"
