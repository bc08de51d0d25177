import base64
import hashlib
import hmac

import pytest

from webhook_app.errors import InvalidSignature
from webhook_app.signing import MIN_SECRET_LENGTH, WebhookSecret, parse_secrets, sign, verify

BODY = b'{"data":{"id":"x","type":"orders"}}'


def test_sign_is_base64_hmac_sha256_of_raw_body():
    expected = base64.b64encode(hmac.new(b"k3y", BODY, hashlib.sha256).digest()).decode()
    assert sign(BODY, secret="k3y") == expected
    assert sign(BODY, secret=b"k3y") == expected


def test_verify_returns_label_of_matching_secret_among_several():
    secrets = parse_secrets("old:first-secret-0123456,new:second-secret-012345")
    assert verify(BODY, signature=sign(BODY, secret="second-secret-012345"), secrets=secrets) == "new"
    assert verify(BODY, signature=sign(BODY, secret="first-secret-0123456"), secrets=secrets) == "old"


@pytest.mark.parametrize(
    "signature", [None, "", "not base64!!", base64.b64encode(b"short").decode(), sign(BODY, secret="wrong")]
)
def test_verify_rejects_missing_malformed_and_wrong(signature):
    with pytest.raises(InvalidSignature):
        verify(BODY, signature=signature, secrets=parse_secrets("a:right-secret-0123456"))


def test_verify_rejects_when_body_changes_by_one_byte():
    sig = sign(BODY, secret="right-secret-0123456")
    with pytest.raises(InvalidSignature):
        verify(BODY + b" ", signature=sig, secrets=parse_secrets("right-secret-0123456"))


def test_no_configured_secret_rejects_everything():
    with pytest.raises(InvalidSignature, match="no webhook secret"):
        verify(BODY, signature=sign(BODY, secret="x"), secrets=())


def test_real_sample_signature_shape_from_facts():
    # A real X-CommerceLayer-Signature (base64 HMAC-SHA256, as documented at
    # https://docs.commercelayer.io/developers/callbacks-security) is 44 characters, 32 bytes.
    assert len(base64.b64decode("DO/Gqc6yf2jXAl41IV01cbT3jhbpq7AGoyrz3zDmSM4=")) == 32


def test_parse_secrets_labels_and_positional_defaults():
    s = parse_secrets(" main:abc-0123456789abcdef , plain-secret-without-label ")
    assert [x.label for x in s] == ["main", "secret-2"]
    assert s[1].secret == b"plain-secret-without-label"


def test_parse_secrets_errors_do_not_echo_secret():
    with pytest.raises(ValueError, match="entry") as exc:
        parse_secrets("a:topsecretvalue,,")
    assert "topsecretvalue" not in str(exc.value)
    with pytest.raises(ValueError, match="unique"):
        parse_secrets("a:x1-0123456789abcdef,a:x2-0123456789abcdef")


def test_secret_repr_hides_secret():
    assert "hunter2" not in repr(WebhookSecret("l", b"hunter2"))


@pytest.mark.parametrize("value", ["main:", "main: ", "a:x", "x", "main:short-secret", "ok:0123456789abcdef,b:"])
def test_empty_and_short_secrets_are_refused(value):
    # `main:` is what a template with an unset variable produces: it must not become the public
    # secret "main:" that anyone can sign with.
    with pytest.raises(ValueError, match=f"empty|{MIN_SECRET_LENGTH} characters") as exc:
        parse_secrets(value)
    assert "short-secret" not in str(exc.value)
