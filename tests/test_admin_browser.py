"""The admin page in a real browser: headless Chromium (Debian's) driven by Selenium.

`webhook-app web` runs as a process on a SQLite file the test fills through the store API; the
operator logs in with a token from `webhook-app admin-token`, finds a delivery, opens it, comes
back and requeues a dead letter. Chromium and its driver come from Debian's `chromium` and
`chromium-driver` packages; without them the test is skipped, except in CI where it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from support import SECRET, signed_headers
from support.builders import order_body
from support.procs import Service, free_port, wait_http

from webhook_app.events import Delivery
from webhook_app.signing import WebhookSecret
from webhook_app.store import DecisionRecord, Recorded
from webhook_app.store.sqlite import SQLiteStore

pytestmark = pytest.mark.e2e

ADMIN_KEY = "browser-admin-key-0123456789abcdef"
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1400",
)
WAIT = 15


def _find(names: tuple[str, ...]) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def browser_or_skip() -> tuple[str, str]:
    """(chromium, chromedriver) paths; skip (visibly) when missing, fail in CI."""
    chromium = _find(("chromium", "chromium-browser"))
    driver = _find(("chromedriver",))
    why = None
    try:
        import selenium  # noqa: F401
    except ImportError:
        why = "selenium is not installed (pip install selenium)"
    if why is None and chromium is None:
        why = "Chromium is not installed (apt-get install chromium)"
    if why is None and driver is None:
        why = "chromedriver is not installed (apt-get install chromium-driver)"
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the browser test: {why}")
        pytest.skip(why)
    assert chromium and driver
    return chromium, driver


def fill(path: Path) -> dict[str, Recorded]:
    """Deliveries through the store API: one done with a decision, one dead letter, one pending."""
    store = SQLiteStore(str(path))
    store.migrate()
    secrets = (WebhookSecret("main", SECRET.encode()),)
    now = time.time() - 120
    ids: dict[str, Recorded] = {}
    try:
        for n, order_id in enumerate(("ordDONE001", "ordDEAD001", "ordPEND001")):
            body = order_body(order_id)
            d = Delivery.from_http(signed_headers(body), body, secrets=secrets)
            ids[order_id] = store.record_delivery(d, now=now + n)
        for order_id in ("ordDONE001", "ordDEAD001"):
            job = store.claim_job(worker="w-browser", lease_seconds=60, now=now + 10)
            assert job is not None and job.order_id == order_id
            if order_id == "ordDONE001":
                decision = DecisionRecord(
                    rule="registered-card",
                    action="flag",
                    reason="customer has a password",
                    outcome="shadow",
                    mode="shadow",
                )
                assert store.finish_job(job.id, worker="w-browser", decision=decision, now=now + 11)
            else:
                assert store.dead_letter(
                    job.id, worker="w-browser", error="Commerce Layer answered 422", decision=None, now=now + 11
                )
    finally:
        store.close()
    return ids


def admin_token(env: dict[str, str]) -> str:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("CL_", "WEBHOOK_APP_"))}
    full.update(env)
    p = subprocess.run(
        [sys.executable, "-m", "webhook_app", "admin-token", "--ttl", "1h"],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


@pytest.fixture
def chrome(tmp_path):
    chromium, driver_path = browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    options.add_argument(f"--user-data-dir={profile}")
    # An explicit driver path: Selenium Manager is never asked to download anything.
    service = DriverService(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def service(tmp_path):
    db = tmp_path / "admin.db"
    ids = fill(db)
    env = {
        "CL_WEBHOOK_SECRETS": f"main:{SECRET}",
        "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{db}",
        "WEBHOOK_APP_ADMIN_KEYS": ADMIN_KEY,
        "WEBHOOK_APP_LOG_LEVEL": "INFO",
    }
    port = free_port()
    # `web` only, no worker: a requeued job stays pending for the test to see.
    svc = Service(["web", "--bind", f"127.0.0.1:{port}", "--workers", "1"], env, tmp_path / "web.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz", proc=svc.proc)
        yield url, env, db, ids
    finally:
        svc.stop()


def test_operator_logs_in_opens_a_delivery_and_requeues_a_dead_letter(chrome, service):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, env, db, ids = service
    wait = WebDriverWait(chrome, WAIT)
    token = admin_token(env)

    chrome.get(url + "/admin/")
    chrome.find_element(By.ID, "token").send_keys(token)
    chrome.find_element(By.ID, "login").click()
    table = wait.until(ec.presence_of_element_located((By.ID, "deliveries")))
    done_row = table.find_element(By.ID, f"delivery-{ids['ordDONE001'].delivery_id}")
    assert "ordDONE001" in done_row.text and "registered-card" in done_row.text and "done" in done_row.text
    assert token not in chrome.page_source
    [cookie] = chrome.get_cookies()
    assert cookie["name"] == "webhook_app_admin" and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/admin"

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "admin-page.png"
    shot.unlink(missing_ok=True)
    assert chrome.save_screenshot(str(shot))

    # the delivery's detail page, then back to the overview
    done_row.find_element(By.CSS_SELECTOR, "a.detail").click()
    order = wait.until(ec.presence_of_element_located((By.ID, "order-id")))
    assert order.text == "ordDONE001"
    assert "X-CommerceLayer-Topic" in chrome.find_element(By.ID, "headers").text
    assert '"id": "ordDONE001"' in chrome.find_element(By.ID, "body").text
    assert "customer has a password" in chrome.find_element(By.ID, "decision-history").text
    chrome.save_screenshot(str(ARTIFACTS / "admin-delivery.png"))
    chrome.back()
    dead_job = ids["ordDEAD001"].job_id
    button = wait.until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, f"#dead-letters button.requeue[data-job='{dead_job}']"))
    )
    assert "Commerce Layer answered 422" in chrome.find_element(By.ID, f"dead-{dead_job}").text

    # requeue the dead letter: it leaves the dead letters and is pending in the store
    button.click()
    notice = wait.until(ec.presence_of_element_located((By.ID, "notice")))
    assert f"Job {dead_job} was requeued" in notice.text
    assert chrome.find_elements(By.ID, f"dead-{dead_job}") == []
    assert chrome.find_element(By.ID, "no-dead-letters").text == "No dead letters."
    store = SQLiteStore(str(db))
    try:
        job = store.get_delivery(ids["ordDEAD001"].delivery_id).job
        assert job["state"] == "pending" and job["attempts"] == 0
    finally:
        store.close()

    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
