"""Refused Commerce Layer credentials hold the work instead of failing it.

The real worker, client and SQLite store against the recording fake of Commerce Layer over HTTP,
with a hand clock: a refused token (or an API 401 a fresh token does not cure) gives the job back
uncounted, says so once, records the state for `/readyz` and the metrics, and re-checks with
backoff; once the credentials are accepted the held jobs run. End to end with real processes and
the sandbox: tests/test_e2e_credentials.py.
"""

from __future__ import annotations

import logging
import random

import pytest
from support import SECRET, signed_headers
from support.builders import order_body

from webhook_app.commercelayer import credentials
from webhook_app.commercelayer.client import CommerceLayerClient
from webhook_app.config import bundled_policy_path
from webhook_app.errors import CredentialsRefused, RetryableCommerceLayerError
from webhook_app.events import Delivery
from webhook_app.policy import load_policy
from webhook_app.signing import parse_secrets
from webhook_app.worker import Worker

SECRETS = parse_secrets(f"main:{SECRET}")
WRONG = "wrong-client-secret-0123456789"


@pytest.fixture
def env(fake_cl, sqlite_store, settings_factory, clock):
    class Env:
        fake = fake_cl
        store = sqlite_store

        def __init__(self):
            self.clock = clock
            self.clients = []

        def worker(self, secret=WRONG, **overrides):
            settings = settings_factory(
                mode="enforce",
                cl_api_base=fake_cl.url,
                cl_client_id=fake_cl.client_id,
                cl_client_secret=secret,
                cl_auth_url=fake_cl.url + "/oauth/token",
                cl_read_timeout=0.5,
                max_attempts=2,
                **overrides,
            )
            client = CommerceLayerClient.from_settings(settings)
            self.clients.append(client)
            return Worker(
                store=sqlite_store,
                policy=load_policy(bundled_policy_path()),
                settings=settings,
                client=client,
                clock=clock,
                worker_id="w1",
                rng=random.Random(1),
            )

        def deliver(self, order_id):
            self.fake.add_order(order_id, source_id=f"ps{order_id}")
            body = order_body(order_id)
            d = Delivery.from_http(signed_headers(body, "orders.place"), body, secrets=SECRETS)
            return sqlite_store.record_delivery(d, now=clock())

    e = Env()
    yield e
    for c in e.clients:
        c.close()


GATE = "webhook_app.commercelayer.credentials"


def errors_logged(caplog):
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def gate_lines(caplog):
    return [r for r in caplog.records if r.name == GATE]


def test_a_refused_token_holds_the_job_uncounted_and_says_so_once(env, caplog):
    recs = [env.deliver(f"o{n}") for n in range(3)]
    worker = env.worker()
    with caplog.at_level(logging.INFO):
        outcomes = worker.drain()
        assert [o.state for o in outcomes] == ["held"]  # the first job met the refusal; no other was tried
        for _ in range(4):
            env.clock.advance(0.1)  # before the first re-check (0.5 to 1 s): nothing is asked, nothing is tried
            assert worker.drain() == []
    assert len(env.fake.calls("token")) == 1 and env.fake.calls("orders.patch") == []
    for rec in recs:
        d = env.store.get_delivery(rec.delivery_id)
        assert d.job["state"] == "pending" and d.job["attempts"] == 0 and d.decisions == []
    held = env.store.get_delivery(recs[0].delivery_id)
    assert [a["outcome"] for a in held.attempts] == ["deferred"]
    assert "check CL_CLIENT_ID and CL_CLIENT_SECRET" in held.job["last_error"]
    [line] = errors_logged(caplog)
    assert line.getMessage().startswith("Commerce Layer refused the credentials (HTTP 401 from the token endpoint")
    assert "check CL_CLIENT_ID and CL_CLIENT_SECRET" in line.getMessage() and WRONG not in line.getMessage()
    status = env.store.get_status(credentials.NAME)
    assert status.state == "refused" and "CL_CLIENT_SECRET" in status.reason and status.source == "w1"
    assert env.store.queue_stats(now=env.clock()).dead == 0


def test_re_checks_back_off_up_to_a_minute_and_the_same_secret_accepted_again_resumes(env, caplog):
    recs = [env.deliver(f"o{n}") for n in range(3)]
    worker = env.worker()
    worker.drain()
    caplog.clear()
    asked_at = []
    with caplog.at_level(logging.INFO):
        for _ in range(40):  # 40 s past the refusal, a second at a time
            env.clock.advance(1.0)
            before = len(env.fake.calls("token"))
            assert worker.drain() == []
            if len(env.fake.calls("token")) > before:
                asked_at.append(env.clock())
        gaps = [b - a for a, b in zip(asked_at, asked_at[1:], strict=False)]
        assert 3 <= len(asked_at) <= 8 and gaps == sorted(gaps) and max(gaps) <= 60
        assert errors_logged(caplog) == []  # still refused: no new line
        env.fake.client_secret = WRONG  # the organization accepts this secret again (rotated back)
        env.clock.advance(61)
        outcomes = worker.drain()
    assert sorted(o.outcome for o in outcomes) == ["applied"] * 3
    for rec in recs:
        d = env.store.get_delivery(rec.delivery_id)
        assert d.job["state"] == "done" and d.job["attempts"] == 1
    assert env.store.get_status(credentials.NAME).state == "ok"
    assert any("accepted the credentials again" in r.getMessage() for r in caplog.records)


def test_a_restart_with_the_right_secret_is_accepted_at_start_and_runs_the_held_jobs(env, caplog):
    recs = [env.deliver(f"o{n}") for n in range(2)]
    env.worker().drain()
    assert env.store.get_status(credentials.NAME).state == "refused"
    fixed = env.worker(secret=env.fake.client_secret)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=GATE):
        assert fixed.credentials.check_at_start() == "ok"
    assert [r.getMessage() for r in gate_lines(caplog)] == ["Commerce Layer credentials accepted"]
    assert env.store.get_status(credentials.NAME).state == "ok"
    assert sorted(o.outcome for o in fixed.drain()) == ["applied", "applied"]
    assert all(env.store.get_delivery(r.delivery_id).job["state"] == "done" for r in recs)


def test_an_api_401_that_a_fresh_token_does_not_cure_holds_and_is_re_checked_through_the_api(env, caplog):
    rec = env.deliver("o1")
    env.fake.fail("orders.patch", status=401, times=2)  # the token is issued, the API refuses it
    worker = env.worker(secret=env.fake.client_secret)
    with caplog.at_level(logging.INFO):
        assert [o.state for o in worker.drain()] == ["held"]
        [line] = errors_logged(caplog)
    assert "with a token just issued" in line.getMessage() and "check CL_API_BASE" in line.getMessage()
    assert env.store.get_delivery(rec.delivery_id).job["attempts"] == 0
    env.clock.advance(61)
    assert [o.outcome for o in worker.drain()] == ["applied"]
    assert [r["route"] for r in env.fake.requests if r["route"] == "other"]  # the re-check read the API
    assert env.store.get_status(credentials.NAME).state == "ok"


def test_the_start_check_says_one_line_either_way_and_unreachable_is_not_refused(env, caplog, sqlite_store):
    refused = env.worker()
    with caplog.at_level(logging.INFO, logger=GATE):
        assert refused.credentials.check_at_start() == "refused"
    [line] = gate_lines(caplog)
    assert line.levelno == logging.ERROR and "check CL_CLIENT_ID and CL_CLIENT_SECRET" in line.getMessage()
    assert refused.drain() == []  # nothing is attempted until a re-check is accepted
    caplog.clear()
    env.fake.fail("token", status=503, times=1)
    down = env.worker(secret=env.fake.client_secret)
    with caplog.at_level(logging.INFO, logger=GATE):
        assert down.credentials.check_at_start() == "unknown"
    [line] = gate_lines(caplog)
    assert line.levelno == logging.WARNING and "could not ask Commerce Layer" in line.getMessage()
    assert "CL_AUTH_URL" in line.getMessage() and "refused" not in line.getMessage()
    env.deliver("o1")
    assert [o.outcome for o in down.drain()] == ["applied"]  # not held: Commerce Layer was down, not wrong


@pytest.mark.parametrize(
    ("status", "fix"), [(401, "CL_CLIENT_SECRET"), (403, "CL_CLIENT_SECRET"), (400, "CL_SCOPE"), (404, "CL_AUTH_URL")]
)
def test_the_token_endpoints_refusals_name_the_setting_to_fix(fake_cl, status, fix):
    fake_cl.fail("token", status=status)
    c = CommerceLayerClient(
        api_base=fake_cl.url, auth_url=fake_cl.url + "/oauth/token", client_id="cid", client_secret="x" * 20
    )
    with pytest.raises(CredentialsRefused) as exc:
        c.check_credentials()
    assert exc.value.answer_status == status and fix in exc.value.fix and not exc.value.retryable
    fake_cl.fail("token", status=429)
    with pytest.raises(RetryableCommerceLayerError):  # too many token requests: not a credentials fault
        c.check_credentials()
    c.close()


def test_an_oauth_shaped_refusal_keeps_its_description(fake_cl):
    """The token endpoint is OAuth: its refusal may be RFC 6749's `{error, error_description}`."""
    body = {"error": "invalid_client", "error_description": "Client authentication failed due to unknown client."}
    fake_cl.fail("token", status=401, body=body)
    c = CommerceLayerClient(
        api_base=fake_cl.url, auth_url=fake_cl.url + "/oauth/token", client_id="cid", client_secret="x" * 20
    )
    with pytest.raises(CredentialsRefused) as exc:
        c.get_order("o1")
    assert "Client authentication failed due to unknown client." in str(exc.value)
    assert exc.value.errors == [{"code": "invalid_client", "detail": body["error_description"]}]
    c.close()


def test_shadow_mode_has_no_credentials_gate(env, settings_factory, sqlite_store):
    shadow = Worker(store=sqlite_store, policy=load_policy(bundled_policy_path()), settings=settings_factory())
    assert shadow.credentials is None


def test_readyz_and_metrics_say_why_in_enforce_mode_and_shadow_mode_stays_green(env, settings_factory, sqlite_store):
    from webhook_app.web import create_app

    # The apps' clock is the test's: each process keeps its /readyz answer for a second.
    # enforce needs credentials to be set (Settings checks it), though the web side never uses them
    creds = {"cl_api_base": env.fake.url, "cl_client_id": env.fake.client_id, "cl_client_secret": WRONG}
    enforce = create_app(settings_factory(mode="enforce", **creds), store=sqlite_store, clock=env.clock).test_client()
    shadow = create_app(settings_factory(mode="shadow"), store=sqlite_store, clock=env.clock).test_client()
    r = enforce.get("/readyz")
    assert r.status_code == 200 and r.json["checks"]["commercelayer_credentials"].startswith("not checked yet")
    assert "webhook_app_commercelayer_credentials_ok" not in enforce.get("/metrics").get_data(as_text=True)

    env.deliver("o1")
    env.worker().drain()  # refused
    assert enforce.get("/readyz").status_code == 200  # the answer of a moment ago, kept for a second
    env.clock.advance(2)
    r = enforce.get("/readyz")
    assert r.status_code == 503 and r.json["status"] == "unavailable"
    why = r.json["checks"]["commercelayer_credentials"]
    assert why.startswith("Commerce Layer refused the credentials (HTTP 401") and "check CL_CLIENT_SECRET" not in why
    assert "check CL_CLIENT_ID and CL_CLIENT_SECRET" in why and "jobs are held" in why and WRONG not in why
    assert "webhook_app_commercelayer_credentials_ok 0.0" in enforce.get("/metrics").get_data(as_text=True)
    r = shadow.get("/readyz")
    assert r.status_code == 200 and "commercelayer_credentials" not in r.json["checks"]
    assert "webhook_app_commercelayer_credentials_ok" not in shadow.get("/metrics").get_data(as_text=True)

    sqlite_store.set_status(credentials.NAME, "ok", reason=None, source="w2", now=env.clock())
    env.clock.advance(2)
    r = enforce.get("/readyz")
    assert r.status_code == 200 and r.json["checks"]["commercelayer_credentials"].startswith("accepted")
    assert "webhook_app_commercelayer_credentials_ok 1.0" in enforce.get("/metrics").get_data(as_text=True)
