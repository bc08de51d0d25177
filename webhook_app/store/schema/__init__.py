"""The schema, one folder of numbered `.sql` files per dialect: `NNN.sql` upgrades version N-1 to N.

Both dialects have the same versions (a version may change nothing in one of them), and
tests/test_store_schema.py checks that both end with the same tables, columns and indexes.
"""

from __future__ import annotations

from importlib import resources

DIALECTS = ("sqlite", "postgres")


def migrations(dialect: str) -> list[list[str]]:
    """The statements of each version, in order (index 0 is version 1)."""
    folder = resources.files(__name__) / dialect
    files = sorted(f.name for f in folder.iterdir() if f.name.endswith(".sql"))
    out = []
    for n, name in enumerate(files, 1):
        if name != f"{n:03d}.sql":
            raise RuntimeError(f"schema files of {dialect} must be numbered 001.sql, 002.sql, ...: found {name}")
        out.append(statements((folder / name).read_text(encoding="utf-8")))
    return out


def statements(sql: str) -> list[str]:
    """The statements of one file: `--` comment lines dropped, split at the `;` ending a line."""
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    parts = (s.strip().rstrip(";").strip() for s in "\n".join(lines).split(";\n"))
    return [p for p in parts if p]


def version() -> int:
    counts = {d: len(migrations(d)) for d in DIALECTS}
    if len(set(counts.values())) != 1:
        raise RuntimeError(f"the dialects' schema versions differ: {counts}")
    return counts[DIALECTS[0]]
