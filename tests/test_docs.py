"""The docs site stays true: it builds with no warning, its generated pages match the code, every
setting is documented, and the go-live guide's example policy and sandbox scenario work together.

`mkdocs build --strict` fails on a broken link or anchor and on a page missing from the nav
(mkdocs.yml's `validation`), so a docs mistake fails the suite like a code mistake.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

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


def test_the_site_builds_in_strict_mode(tmp_path):
    """A broken link or anchor, a page missing from the nav, a snippet whose file is gone: each is a
    warning, and --strict makes any warning fail the build."""
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        if os.environ.get("CI"):
            pytest.fail("mkdocs and mkdocs-material are in the test extra; install the lock")
        pytest.skip("mkdocs is not installed (pip install -r requirements.lock)")
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    go_live = (tmp_path / "site" / "howto" / "go-live" / "index.html").read_text(encoding="utf-8")
    assert "reuse-for-renewals" in go_live and "CustCarolA" in go_live  # the example files, shown


def test_a_page_left_out_of_the_nav_fails_the_build(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs is not installed (pip install -r requirements.lock)")
    import shutil

    shutil.copytree(DOCS, tmp_path / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    (tmp_path / "docs" / "orphan.md").write_text("# Orphan\n\nSee [nowhere](nowhere.md).\n", encoding="utf-8")
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert r.returncode != 0
    assert "orphan.md" in r.stderr and "nowhere.md" in r.stderr


def test_a_stale_generated_page_is_reported(tmp_path, capsys):
    gen, out = _generator(), ["--docs-dir", str(tmp_path)]
    assert gen.main([*out, "--check"]) == 1  # nothing written yet: every page is out of date
    assert gen.main(out) == 0 and gen.main([*out, "--check"]) == 0
    (tmp_path / "reference" / "configuration.md").write_text("stale\n", encoding="utf-8")
    assert gen.main([*out, "--check"]) == 1
    assert "out of date: reference/configuration.md" in capsys.readouterr().err


# --- the go-live guide's example: a policy that reuses a wallet entry, and its sandbox scenario ----


def test_the_example_policy_passes_policy_check(capsys):
    from webhook_app.cli import main

    assert main(["policy", "check", str(EXAMPLES / "reuse-wallet-policy.toml")]) == 0
    out = capsys.readouterr()
    assert "policy OK: 2 rules" in out.out and "warning" not in out.err


def test_the_example_scenario_and_policy_reuse_the_valid_card_and_save_a_new_one(sqlite_store, settings_factory):
    """The guide's loop in one process: the scenario loads in the sandbox, `webhooks register`'s
    work creates the webhooks and hands out their secrets, each delivery verifies with them, and
    the worker in enforce mode pays the renewal with the valid card (passing over the newer,
    expired one) and saves the first purchase's card."""
    from commercelayer_sandbox import SandboxServer
    from commercelayer_sandbox.seed import read_scenario
    from support.sandbox import Receiver

    from webhook_app.commercelayer.client import CommerceLayerClient
    from webhook_app.events import Delivery
    from webhook_app.ops.registration import register
    from webhook_app.policy import load_policy
    from webhook_app.signing import parse_secrets
    from webhook_app.store import DeliveryFilter
    from webhook_app.worker import Worker

    scenario = read_scenario(EXAMPLES / "reuse-wallet-scenario.toml")
    assert scenario.get("webhooks") is None  # the guide registers them
    policy = load_policy(EXAMPLES / "reuse-wallet-policy.toml")
    receiver = Receiver()
    config = {"sender": {"backoff_base": 0.001, "timeout": 2.0}}
    with SandboxServer(scenario=scenario, config=config) as server:
        settings = settings_factory(
            mode="enforce",
            cl_api_base=server.api_url,
            cl_auth_url=server.auth_url,
            cl_client_id="sandbox-client-id",
            cl_client_secret="sandbox-client-secret",
        )
        client = CommerceLayerClient.from_settings(settings)
        try:
            planned = register(client, policy, callback_url=receiver.url, dry_run=False, anonymization=False)
            assert sorted(p.topic for p in planned) == ["orders.pending", "orders.place"]
            secrets = parse_secrets(",".join(f"{p.topic.replace('.', '-')}:{p.shared_secret}" for p in planned))
            server.sandbox.trigger("orders.pending", ["OrdRenewAa"])
            server.sandbox.trigger("orders.place", ["OrdFirstAa"])
            for call in receiver.wait_for(2):
                sqlite_store.record_delivery(Delivery.from_http(call.headers, call.body, secrets=secrets), now=1.0)
            outcomes = Worker(store=sqlite_store, policy=policy, settings=settings, client=client).drain()
        finally:
            client.close()
            receiver.close()
        snapshot = server.sandbox.state.snapshot()

    assert [o.state for o in outcomes] == ["done", "done"]

    def latest(order_id: str) -> dict:
        (d,) = sqlite_store.list_deliveries(DeliveryFilter(order_id=order_id, limit=1))
        full = sqlite_store.get_delivery(d.id)
        assert full is not None
        return full.decisions[-1]

    renewal, first = latest("OrdRenewAa"), latest("OrdFirstAa")
    assert (renewal["rule"], renewal["outcome"], renewal["wallet_entry_id"]) == (
        "reuse-for-renewals",
        "applied",
        "WalletValid",
    )
    assert "passed over WalletOldAa (card expired 01/2024)" in renewal["reason"]
    orders = {o["id"]: o for o in snapshot["orders"]}
    assert orders["OrdRenewAa"]["payment_source"]["card_last4"] == "4242"
    assert (first["rule"], first["outcome"]) == ("save-on-place", "applied")
    (saved,) = [w for w in snapshot["customer_payment_sources"] if w.get("origin_order_id") == "OrdFirstAa"]
    assert first["wallet_entry_id"] == saved["id"]


def test_no_page_repeats_a_heading_and_generated_cells_are_plain():
    """A section pasted twice, argparse's `==SUPPRESS==` shown as a meaning, a default wrapped
    in italics twice (`*(*(...)*)*`): each reads as a mistake to a new reader."""
    for page in DOCS.rglob("*.md"):
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        headings = [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")]
        repeated = {h for h in headings if headings.count(h) > 1}
        assert not repeated, f"{page.relative_to(ROOT)} repeats {repeated}"
    assert "==SUPPRESS==" not in (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    assert "*(*(" not in (DOCS / "reference" / "configuration.md").read_text(encoding="utf-8")


def test_go_live_keeps_the_printed_secrets_out_of_the_checkout_and_shows_todays_schema():
    from webhook_app.store import SCHEMA_VERSION

    guide = (DOCS / "howto" / "go-live.md").read_text(encoding="utf-8")
    assert "> register.out" not in guide and "> ~/register.out" in guide and "umask 077" in guide
    assert "register.out" in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert re.findall(r"schema version (\d+)", guide) == [str(SCHEMA_VERSION)]
    assert "the reason says `passed over" not in guide  # the log line has no reason; the stored decision has


# --- references from the code to the manual ---------------------------------------------------------

#: Where comments and docstrings point at the manual.
REFERRING = ("webhook_app", "sandbox/commercelayer_sandbox", "bench", "deploy")
#: The one form such a reference takes: `docs/<page>.md, *Heading*` (or `README.md, *Heading*`), the
#: heading as the page spells it; a line break, and a comment's `#`, may fall anywhere in it.
REFERENCE = re.compile(r"\b((?:docs/[\w./-]+|README)\.md),\s+\*([^*]+)\*")
#: README followed on its line by a heading in stars or quotes: the form from before the manual
#: moved to docs/, checked against README.md so that no such reference is left pointing nowhere.
README_REFERENCE = re.compile(r"\bREADME\b[^\n]*?[*\"]([^*\"\n]+)[*\"]")


def _headings(page: Path) -> set[str]:
    """A page's headings, outside code blocks: its `#` lines (without an `{#anchor}`) and the bold
    words that open a paragraph (`**Wallet activity.** Commerce Layer sends...`), the run-in
    subheadings the pages use within a section, without their closing full stop."""
    text = re.sub(r"^\s*```.*?^\s*```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    atx = re.findall(r"^#{1,6}\s+(.+?)(?:\s*\{[^}]*\})?\s*$", text, re.M)
    run_in = re.findall(r"(?:\A|\n[ \t]*\n)\*\*([^*\n]+?)\.?\*\*", text)
    return {" ".join(h.split()) for h in [*atx, *run_in]}


def _references(source: Path) -> list[tuple[str, str]]:
    """(page, heading) for each reference in one file."""
    text = source.read_text(encoding="utf-8")
    joined = re.sub(r"[ \t]*\n[ \t]*(?:#[ \t]*)?", " ", text)  # a reference wrapped over lines
    found = [(page, " ".join(heading.split())) for page, heading in REFERENCE.findall(joined)]
    return found + [("README.md", heading.strip()) for heading in README_REFERENCE.findall(text)]


def _stale_references(sources: list[Path], root: Path = ROOT) -> list[str]:
    stale = []
    for source in sources:
        for page, heading in _references(source):
            where = f"{source.relative_to(root)}: {page}, *{heading}*"
            if not (root / page).is_file():
                stale.append(f"{where}: no such page")
            elif heading not in _headings(root / page):
                stale.append(f"{where}: no such heading on that page")
    return stale


def test_every_reference_from_the_code_names_a_page_and_heading_that_exist():
    """A comment that sends the reader to `docs/explanation/worker.md, *Every save verified*`
    must find that heading there; when a page is split or a heading renamed, this names every
    reference left behind."""
    sources = sorted(p for d in REFERRING for p in (ROOT / d).rglob("*.py"))
    assert sum(len(_references(p)) for p in sources) >= 15  # the scan sees the references
    assert _stale_references(sources) == []


def test_a_reference_to_a_missing_page_or_heading_is_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "# Page\n\n## Limits {#limits}\n\n**Run-in heading.** Text.\n\n```sh\n# not a heading\n```\n",
        encoding="utf-8",
    )
    (tmp_path / "README.md").write_text("# Project\n\n## Quick start\n", encoding="utf-8")
    source = tmp_path / "module.py"
    source.write_text(
        '"""See docs/page.md, *Limits*, docs/page.md,\n*Run-in heading*, and README.md, *Quick start*."""\n'
        "# (docs/page.md, *Run-in\n# heading*) (docs/page.md, *not a heading*) (docs/gone.md, *Page*)\n"
        'X = 1  # (README, "Expired cards")\n',
        encoding="utf-8",
    )
    assert _stale_references([source], root=tmp_path) == [
        "module.py: docs/page.md, *not a heading*: no such heading on that page",
        "module.py: docs/gone.md, *Page*: no such page",
        "module.py: README.md, *Expired cards*: no such heading on that page",
    ]
