"""The docs site stays true: it builds with no warning, its generated pages match the code, every
setting is documented, and the go-live guide's example policy and sandbox scenario work together.

`mkdocs build --strict` fails on a broken link or anchor and on a page missing from the nav
(mkdocs.yml's `validation`), so a docs mistake fails the suite like a code mistake.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from webhook_app.config import Settings

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"


def _generator():
    sys.path.insert(0, str(DOCS))
    try:
        import gen_reference
    finally:
        sys.path.remove(str(DOCS))
    return gen_reference


def test_every_setting_has_a_doc():
    undocumented = [f.metadata["env"] for f in fields(Settings) if not f.metadata.get("doc", "").strip()]
    assert undocumented == [], f"add doc= to these settings in webhook_app/config.py: {undocumented}"


def test_the_configuration_page_lists_every_setting_with_its_doc_and_default():
    page = (DOCS / "reference" / "configuration.md").read_text(encoding="utf-8")
    rows = {
        m.group(1): (m.group(2), m.group(3))
        for m in re.finditer(r"^\| `([A-Z][A-Z0-9_]+)` \| (.*?) \| (.*) \|$", page, re.M)
    }
    expected = set(Settings.variables()) | {name for name, _, _ in _generator().LIBRARY_VARIABLES}
    assert set(rows) == expected
    default, doc = rows["CL_CONNECT_TIMEOUT"]
    assert default == "`3.05`" and doc == "seconds to connect to Commerce Layer"
    assert rows["CL_RATE_LIMITS"][0] == "`100/60,25/10`"
    assert rows["WEBHOOK_APP_GROUP_COMMIT"][0] == "`true`"
    assert rows["CL_WEBHOOK_SECRETS"][1].endswith("*(secret)*")
    assert rows["WEBHOOK_APP_MODE"][0].startswith("`enforce` if")


def test_the_generated_reference_pages_are_current():
    r = subprocess.run(
        [sys.executable, str(DOCS / "gen_reference.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr


def test_a_stale_generated_page_is_reported(tmp_path, capsys):
    gen, out = _generator(), ["--docs-dir", str(tmp_path)]
    assert gen.main([*out, "--check"]) == 1  # nothing written yet: every page is out of date
    assert gen.main(out) == 0 and gen.main([*out, "--check"]) == 0
    (tmp_path / "reference" / "configuration.md").write_text("stale\n", encoding="utf-8")
    assert gen.main([*out, "--check"]) == 1
    assert "out of date: reference/configuration.md" in capsys.readouterr().err
