"""The command line as a user runs it (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support import DATA, SECRET, base_env
from support.builders import order_body

from webhook_app.config import bundled_policy_path
from webhook_app.signing import sign
from webhook_app.store import SCHEMA_VERSION


def run(*args, env=None, stdin=None, tmp=None):
    base = {**base_env()}
    return subprocess.run(
        [sys.executable, "-m", "webhook_app", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        input=stdin,
        timeout=60,
        cwd=tmp,
    )


def test_sign_prints_the_header_value(tmp_path):
    f = tmp_path / "body.json"
    f.write_bytes(order_body("o1"))
    expected = sign(f.read_bytes(), secret="abc")
    r = run("sign", "--secret-env", "MY_SECRET", str(f), env={"MY_SECRET": "abc"})
    assert r.returncode == 0 and r.stdout.strip() == expected
    (tmp_path / "secret").write_text("abc\n")  # as `echo` writes it: the newline is not the secret's
    r = run("sign", "--secret-file", str(tmp_path / "secret"), str(f))
    assert r.returncode == 0 and r.stdout.strip() == expected
    r = run("sign", "--secret-file", "-", str(f), stdin="abc\n")
    assert r.returncode == 0 and r.stdout.strip() == expected
    assert run("sign", str(f)).returncode == 2


def test_a_secret_is_never_taken_from_the_command_line(tmp_path):
    """Every local user can read a process's arguments (ps, /proc/PID/cmdline): `--secret S` is
    refused with the forms that keep it out of them, for `sign` and `replay` alike."""
    f = tmp_path / "body.json"
    f.write_bytes(order_body("o1"))
    env = {"WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    for args in (
        ("sign", "--secret", "abc", str(f)),
        ("replay", "--target", "http://127.0.0.1:9/", "--secret", "abc", "--dry-run", "--files", str(f)),
    ):
        r = run(*args, env=env)
        line = _one_line_error(r)
        assert "--secret-env VAR or --secret-file PATH" in line and "ps" in line
        assert "abc" not in r.stdout + r.stderr
    line = _one_line_error(run("sign", "--secret-file", "-", "-", stdin="abc"))
    assert "both come from standard input" in line
    line = _one_line_error(run("sign", "--secret-env", "UNSET_VAR", str(f)))
    assert "UNSET_VAR" in line and "not set" in line
    line = _one_line_error(run("sign", "--secret-file", str(tmp_path / "nope"), str(f)))
    assert "--secret-file" in line and "cannot read" in line


def test_policy_check_prints_decision_and_rule_per_payload(tmp_path):
    reg = tmp_path / "orders.place.registered.json"
    reg.write_bytes(order_body("oREG", source_type="stripe_payments"))
    approve = tmp_path / "orders.approve.registered.json"
    approve.write_bytes(order_body("oAPP"))
    guest = DATA / "orders.place.guest-wire-transfer.json"
    policy = str(bundled_policy_path())
    r = run("policy", "check", policy, str(reg), str(approve), str(guest))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert "save_payment_source by rule save-registered-customer-source" in lines[0] and "oREG" in lines[0]
    assert "orders.approve" in lines[1] and "skip by rule default" in lines[1]
    assert "wBXVhZOmXO: skip" in lines[2]
    r = run("policy", "check", "--json", "--topic", "orders.place", policy, str(approve))
    out = json.loads(r.stdout)
    assert out["action"] == "save_payment_source" and out["rule"] == "save-registered-customer-source"


def test_policy_check_shows_guards(tmp_path):
    p = tmp_path / "all.toml"
    p.write_text('version = 1\n[default]\naction = "save_payment_source"\n')
    g = tmp_path / "orders.place.guest.json"
    g.write_bytes(order_body("oG", guest=True))
    r = run("policy", "check", str(p), str(g))
    assert "skip by guard guest_order (rule default chose save_payment_source)" in r.stdout


def test_policy_check_invalid_policy_exits_non_zero_naming_rule_and_field(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text(
        'version = 1\n[default]\naction = "skip"\n[[rules]]\nname = "vip"\naction = "save_payment_source"\n'
        'when = { field = "order.total_amount_cents", greater = 5 }\n'
    )
    r = run("policy", "check", str(p))
    assert r.returncode == 1
    assert "rule 'vip'" in r.stderr and "field 'when'" in r.stderr and "greater" in r.stderr
    assert "Traceback" not in r.stderr


def test_policy_check_bad_payload_is_reported(tmp_path):
    bad = tmp_path / "orders.place.bad.json"
    bad.write_text("{not json")
    r = run("policy", "check", str(bundled_policy_path()), str(bad))
    assert r.returncode == 1 and "invalid payload" in r.stderr


def test_db_upgrade_and_status(tmp_path):
    env = {"WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    r = run("db", "status", env=env)  # reads only: no database yet is said, and none is made
    assert r.returncode == 2 and f"no database at {tmp_path / 'cli.db'}" in r.stderr
    assert not (tmp_path / "cli.db").exists()
    r = run("db", "upgrade", env=env)
    assert r.returncode == 0 and f"version 0 -> {SCHEMA_VERSION}" in r.stdout
    assert run("db", "status", env=env).returncode == 0


def test_read_only_commands_make_nothing_at_a_mistyped_sqlite_path(tmp_path):
    """`db status` and `doctor` read only: a mistyped path is named, and no file or directory
    appears there."""
    typo = tmp_path / "typo-dir" / "app.db"
    env = {"WEBHOOK_APP_DATABASE_URL": f"sqlite:///{typo}"}
    r = run("db", "status", env=env)
    assert r.returncode == 2 and f"no database at {typo}" in r.stderr and "Traceback" not in r.stderr
    r = run("doctor", "--callback-url", "http://127.0.0.1:9/webhooks/commercelayer", env=env)
    line = next(x for x in r.stdout.splitlines() if "database" in x)
    assert line.startswith("\u2717 database: no database at"), r.stdout
    assert "version 0" not in r.stdout
    assert not typo.parent.exists()


def test_worker_once_processes_due_jobs(tmp_path):
    from support import SECRET, signed_headers

    from webhook_app.events import Delivery
    from webhook_app.signing import parse_secrets
    from webhook_app.store.sqlite import SQLiteStore

    db = tmp_path / "w.db"
    store = SQLiteStore(str(db))
    store.migrate()
    body = order_body("o1")
    store.record_delivery(Delivery.from_http(signed_headers(body), body, secrets=parse_secrets(SECRET)), now=1.0)
    r = run("worker", "--once", env={"WEBHOOK_APP_DATABASE_URL": f"sqlite:///{db}"})
    assert r.returncode == 0, r.stderr
    assert store.queue_stats(now=2.0).done == 1
    store.close()


def test_help_lists_commands():
    r = run("--help")
    for cmd in ("serve", "web", "worker", "sign", "policy", "db"):
        assert cmd in r.stdout


def _loaded_by(arg, heavy):
    """(stdout lines, the modules under `heavy` loaded) of `python -m webhook_app ARG` (it exits 0)."""
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['webhook-app', {arg!r}]\n"
        "try:\n"
        "    runpy.run_module('webhook_app', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        f"heavy = {tuple(heavy)!r}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.rsplit('.', 1)[0] in heavy))\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=base_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    *out, loaded = r.stdout.splitlines()
    return out, loaded


def test_version_answers_without_loading_flask_the_sandbox_or_the_store():
    """`--version` is printed before any command group is imported (the sandbox's registration
    imports its Flask app): a check that its imports stay out, and that the version printed is the
    installed distribution's."""
    from importlib.metadata import version

    heavy = ("flask", "werkzeug", "requests", "commercelayer_sandbox", "webhook_app.store", "webhook_app.cli")
    out, loaded = _loaded_by("--version", heavy)
    assert out == [f"webhook-app {version('webhook-app')}"]
    assert loaded == "[]"
    assert run("--version").stdout == f"webhook-app {version('webhook-app')}\n"


def test_help_lists_the_sandbox_without_loading_its_flask_app():
    # The groups are imported to build the parser, the sandbox's argument definitions with them;
    # its Flask app, the HTTP client and the store only when a command runs.
    heavy = ("flask", "werkzeug", "requests", "webhook_app.store", "commercelayer_sandbox")
    out, loaded = _loaded_by("--help", heavy)
    assert any(line.split()[:1] == ["sandbox"] for line in out), out
    assert loaded == "['commercelayer_sandbox', 'commercelayer_sandbox.cli', 'commercelayer_sandbox.errors']"


def _one_line_error(r):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_cli_errors_are_one_line_with_exit_status_2(tmp_path):
    env = {"WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    line = _one_line_error(run("reconcile", "--since", "bogus", env=env))
    assert "--since" in line and "24h" in line
    line = _one_line_error(run("sign", "--secret-env", "S", str(tmp_path / "missing.json"), env={"S": "s"}))
    assert "missing.json: cannot read" in line
    line = _one_line_error(
        run(
            "replay",
            "--target",
            "http://127.0.0.1:9/",
            "--secret-env",
            "S",
            "--dry-run",
            "--files",
            str(tmp_path / "missing.json"),
            env={**env, "S": "s"},
        )
    )
    assert "missing.json: cannot read" in line
    nameless = tmp_path / "body.json"
    nameless.write_bytes(order_body("o1"))
    line = _one_line_error(
        run(
            "replay",
            "--target",
            "http://127.0.0.1:9/",
            "--secret-env",
            "S",
            "--dry-run",
            "--files",
            str(nameless),
            env={**env, "S": "s"},
        )
    )
    assert "--file-topic" in line  # the option that exists
    line = _one_line_error(run("no-such-command"))
    assert "invalid choice" in line
    line = _one_line_error(run("db", "upgrade", env={"WEBHOOK_APP_MAX_ATTEMPTS": "many"}))
    assert (
        line
        == "webhook-app: configuration error: WEBHOOK_APP_MAX_ATTEMPTS: must be a whole number greater than zero (got 'many')"
    )


def test_policy_check_without_payloads_says_ok_and_counts_rules():
    r = run("policy", "check", str(bundled_policy_path()))
    assert r.returncode == 0 and r.stdout.strip() == "policy OK: 2 rules"


def test_policy_check_is_honest_about_non_order_topics(tmp_path):
    f = tmp_path / "customers.create.sample.json"
    f.write_bytes(b'{"data":{"id":"cusAB12","type":"customers","attributes":{"email":"a@example.com"}}}')
    r = run("policy", "check", str(bundled_policy_path()), str(f))
    assert r.returncode == 0
    assert "customers.create: not an order topic" in r.stdout and "orders.place" not in r.stdout


TYPO_POLICY = (
    'version = 1\n[default]\naction = "skip"\n\n[[rules]]\nname = "registered"\naction = "save_payment_source"\n'
    'topics = ["orders.place"]\nwhen = { field = "order.gest", equals = false }\n'
)
TYPO_LINE = 'rule \'registered\': order.gest: orders have no attribute "gest"; did you mean "guest"?'


def test_policy_check_refuses_a_misspelt_attribute_naming_the_line_and_the_nearest_name(tmp_path):
    # Before: "policy OK" and exit 0, and every order fell to the default rule.
    p = tmp_path / "typo.toml"
    p.write_text(TYPO_POLICY)
    r = run("policy", "check", str(p))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr == f"webhook-app: invalid policy: {p}:9: {TYPO_LINE}\n" and r.stdout == ""
    fixed = tmp_path / "fixed.toml"
    fixed.write_text(TYPO_POLICY.replace("order.gest", "order.guest"))
    r = run("policy", "check", str(fixed))
    assert r.returncode == 0 and r.stdout.strip() == "policy OK: 1 rules"


def test_the_service_refuses_to_start_with_a_misspelt_attribute(tmp_path):
    import os
    import signal

    p = tmp_path / "typo.toml"
    p.write_text(TYPO_POLICY)
    env = {
        **base_env(),
        "WEBHOOK_APP_POLICY": str(p),
        "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp_path / 'svc.db'}",
        "CL_WEBHOOK_SECRETS": f"main:{SECRET}",
    }
    for cmd in (["serve", "--bind", "127.0.0.1:0"], ["web", "--bind", "127.0.0.1:0"], ["worker"]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "webhook_app", *cmd],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise AssertionError(f"{cmd[0]} started with a policy naming order.gest") from None
        assert proc.returncode == 2, (cmd, err)
        assert err == f"webhook-app: invalid policy: {p}:9: {TYPO_LINE}\n", (cmd, err)
        assert not (tmp_path / "svc.db").exists()  # refused before touching anything


def test_the_worker_refuses_to_start_with_a_value_of_the_wrong_type(tmp_path):
    # The service loads its policy with the same checks as `policy check`: a condition that can
    # never match stops it before it touches the database.
    p = tmp_path / "types.toml"
    p.write_text(TYPO_POLICY.replace('"order.gest", equals = false', '"order.guest", equals = "no"'))
    env = {
        "WEBHOOK_APP_POLICY": str(p),
        "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp_path / 'svc.db'}",
        "CL_WEBHOOK_SECRETS": f"main:{SECRET}",
    }
    line = _one_line_error(run("worker", "--once", env=env, tmp=tmp_path))
    assert line.startswith(f"webhook-app: invalid policy: {p}:9: rule 'registered': order.guest is a boolean, ")
    assert not (tmp_path / "svc.db").exists()


def test_policy_check_samples_decides_each_and_reports_rules_matching_none_or_all(tmp_path):
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "orders.place.stripe.json").write_bytes(order_body("oS1", source_type="stripe_payments"))
    (samples / "orders.place.klarna.json").write_bytes(order_body("oK1", source_type="klarna_payments"))
    (samples / "orders.place.guest.json").write_bytes(order_body("oG1", guest=True))
    (samples / "customers.create.json").write_bytes(b'{"data":{"id":"cusAB12","type":"customers"}}')
    (samples / "notes.json").write_text("{}")
    (samples / "README.md").write_text("not a sample")
    policy = tmp_path / "p.toml"
    policy.write_text(
        'version = 1\n[default]\naction = "skip"\n'
        '[[rules]]\nname = "registered"\naction = "skip"\nwhen = { field = "order.guest", equals = false }\n'
        '[[rules]]\nname = "everything"\naction = "skip"\nwhen = { field = "order.id", exists = true }\n'
        '[[rules]]\nname = "nothing"\naction = "skip"\nwhen = { field = "market.code", equals = "zz" }\n'
        '[[rules]]\nname = "pending-only"\naction = "skip"\ntopics = ["orders.pending"]\n'
    )
    r = run("policy", "check", str(policy), "--samples", str(samples))
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert sum("order o" in line and ": skip by rule " in line for line in out) == 3
    assert any("customers.create: not an order topic" in line for line in out)
    assert out[-5:] == [
        "rule registered: matches 2 of 3 samples, decides 2",
        "rule everything: matches EVERY sample (3 of 3), decides 1",
        "rule nothing: matches NO sample (0 of 3)",
        "rule pending-only: matches NO sample (0 of 3) (no sample is on its topics: orders.pending)",
        "default: decides 0 of 3 samples",
    ]
    assert "notes.json: skipped: no topic in the name" in r.stderr
    r = run("policy", "check", str(policy), "--samples", str(samples), "--json")
    summary = json.loads(r.stdout.splitlines()[-1])
    assert [(x["rule"], x["matched"], x["decided"]) for x in summary["rules"]][:2] == [
        ("registered", 2, 2),
        ("everything", 3, 1),
    ]
    r = run("policy", "check", str(policy), "--samples", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a directory" in r.stderr


def test_policy_check_samples_of_commerce_layer(tmp_path):
    # The reference samples (a guest order and two non-order topics) and the tests' own.
    for d in (Path("/work/shared/commercelayer/samples"), DATA):
        if not d.is_dir():
            continue
        r = run("policy", "check", str(bundled_policy_path()), "--samples", str(d))
        assert r.returncode == 0, r.stderr
        assert "rule save-registered-customer-source: matches NO sample (0 of 1)" in r.stdout
        assert "default: decides 1 of 1 samples" in r.stdout
