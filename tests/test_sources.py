"""webhook_app/sources.py: the source allowlist and whose X-Forwarded-For counts (pure, no server).

The end-to-end checks, with `web` and `serve` as real processes, are in tests/test_e2e_sources.py.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from webhook_app.config import Settings
from webhook_app.errors import ConfigError
from webhook_app.sources import (
    COMMERCELAYER_EU,
    COMMERCELAYER_US,
    Sources,
    address,
    forwarded_for,
    parse_allowed_sources,
    parse_trusted_proxies,
)

EU, US = COMMERCELAYER_EU[0], COMMERCELAYER_US[0]
FACTS = Path("/work/shared/commercelayer/FACTS.md")


def nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


def test_the_names_are_commerce_layers_published_addresses():
    # core/callbacks-security: three per region
    assert set(COMMERCELAYER_EU) == {"54.246.59.198", "99.81.212.137", "54.74.119.33"}
    assert set(COMMERCELAYER_US) == {"3.220.172.67", "34.202.177.238", "52.0.55.171"}
    if FACTS.is_file():  # the reference notes, where present, say the same
        text = FACTS.read_text()
        assert all(a in text for a in COMMERCELAYER_EU + COMMERCELAYER_US)
    assert parse_allowed_sources("commercelayer") == nets(*(f"{a}/32" for a in COMMERCELAYER_EU + COMMERCELAYER_US))
    assert parse_allowed_sources("COMMERCELAYER-EU") == nets(*(f"{a}/32" for a in COMMERCELAYER_EU))
    assert parse_allowed_sources("commercelayer-us") == nets(*(f"{a}/32" for a in COMMERCELAYER_US))


def test_names_cidrs_and_addresses_mix_ipv4_and_ipv6_deduplicated():
    got = parse_allowed_sources(" commercelayer-eu , 10.0.0.0/8,2001:db8::/32, 198.51.100.7,,commercelayer-eu, ::1")
    assert got == nets(
        *(f"{a}/32" for a in COMMERCELAYER_EU), "10.0.0.0/8", "2001:db8::/32", "198.51.100.7/32", "::1/128"
    )
    assert parse_allowed_sources("") == () and parse_trusted_proxies(" , ") == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("commercelayer-asia", "'commercelayer-asia' is not a CIDR nor a known name (commercelayer, commercelayer-eu"),
        ("hooks.example.com", "not a CIDR nor a known name"),
        ("10.0.0.0/33", "'10.0.0.0/33' is not an IP address or a CIDR"),
        ("300.1.2.3", "is not an IP address or a CIDR"),
        ("10.1.2.3/8", "has host bits set (did you mean 10.0.0.0/8?)"),
        ("2001:db8::1/32", "did you mean 2001:db8::/32?"),
        ("*", "is not an IP address or a CIDR"),
    ],
)
def test_a_bad_entry_is_named_with_what_is_expected(value, message):
    with pytest.raises(ValueError, match="^.*" + message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        parse_allowed_sources(value)


def test_trusted_proxies_take_cidrs_not_names():
    assert parse_trusted_proxies("127.0.0.1/32, fd00::/8") == nets("127.0.0.1/32", "fd00::/8")
    with pytest.raises(ValueError, match="names are for WEBHOOK_APP_ALLOWED_SOURCES"):
        parse_trusted_proxies("commercelayer")
    with pytest.raises(ValueError, match="'nginx' is not a CIDR$"):
        parse_trusted_proxies("nginx")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.9", "203.0.113.9"),
        (" 203.0.113.9 ", "203.0.113.9"),
        ("203.0.113.9:4711", "203.0.113.9"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("::ffff:54.246.59.198", "54.246.59.198"),  # a dual-stack listener's view of an IPv4 client
        ("unknown", None),
        ("_hidden", None),
        ("", None),
        ("local", None),
    ],
)
def test_addresses_as_peers_and_proxies_write_them(text, expected):
    got = address(text)
    assert (None if got is None else str(got)) == expected


def test_off_by_default_everyone_is_let_in():
    off = Sources()
    assert not off.enabled
    assert off.allows("198.51.100.7") and off.allows("", "")


def test_without_trusted_proxies_the_peer_is_the_source_and_x_forwarded_for_is_ignored():
    s = Sources(parse_allowed_sources("commercelayer"))
    assert s.allows(EU) and s.allows(US)
    assert s.allows(f"::ffff:{EU}")
    assert not s.allows("127.0.0.1")
    assert not s.allows("127.0.0.1", EU)  # a client's own claim
    assert not s.allows("198.51.100.7", f"{EU}, {US}")
    assert s.source("198.51.100.7", EU) == ipaddress.ip_address("198.51.100.7")
    assert s.allows(EU, "198.51.100.7")  # the peer is Commerce Layer, whatever it says


def test_a_cidr_lets_in_every_address_in_it_ipv6_too():
    s = Sources(parse_allowed_sources("127.0.0.0/8, 2001:db8::/32"))
    assert s.allows("127.0.0.1") and s.allows("127.0.0.2") and s.allows("2001:db8::42")
    assert not s.allows("128.0.0.1") and not s.allows("2001:db9::1") and not s.allows("::1")
    assert not s.allows("::ffff:128.0.0.1")


def test_a_trusted_proxy_s_x_forwarded_for_is_walked_from_the_right():
    s = Sources(parse_allowed_sources("commercelayer"), parse_trusted_proxies("10.0.0.0/8, fd00::/8"))
    assert s.allows("10.0.0.5", EU)
    assert s.allows("10.0.0.5", f"{EU}, 10.0.0.9")  # two proxies of ours
    assert s.allows("fd00::1", f"{US},fd00::2")
    assert s.allows("10.0.0.5", f"{EU}:1234")  # some proxies add the client's port
    # The first address from the right that is not ours is the source; what is left of it is the
    # client's own claim, never read.
    assert s.source("10.0.0.5", f"{EU}, 198.51.100.7, 10.0.0.9") == ipaddress.ip_address("198.51.100.7")
    assert not s.allows("10.0.0.5", f"{EU}, 198.51.100.7")
    assert not s.allows("10.0.0.5", f"{EU}, 198.51.100.7, 10.0.0.9")
    assert s.allows("10.0.0.5", f"198.51.100.7, {EU}")  # a spoof to the left of Commerce Layer does nothing


def test_a_spoofed_x_forwarded_for_from_an_untrusted_peer_is_ignored():
    s = Sources(parse_allowed_sources("commercelayer"), parse_trusted_proxies("127.0.0.1/32"))
    assert s.allows("127.0.0.1", EU)
    assert not s.allows("127.0.0.2", EU)
    assert not s.allows("127.0.0.2", f"{EU}, 127.0.0.1")
    assert s.source("127.0.0.2", EU) == ipaddress.ip_address("127.0.0.2")


def test_the_source_is_unknown_and_refused_when_the_chain_says_nothing_usable():
    s = Sources(parse_allowed_sources("commercelayer, 10.0.0.0/8"), parse_trusted_proxies("10.0.0.0/8"))
    assert s.source("10.0.0.5", f"{EU}, unknown") is None
    assert not s.allows("10.0.0.5", f"{EU}, unknown")
    assert not s.allows("10.0.0.5", f"{EU},,")  # an empty entry is not an address
    # every hop a proxy of ours: the farthest is the source (here allowed, as 10/8 is listed)
    assert s.source("10.0.0.5", "10.0.0.7, 10.0.0.6") == ipaddress.ip_address("10.0.0.7")
    assert s.allows("10.0.0.5", "")


def test_a_unix_socket_peer_is_a_trusted_hop():
    """gunicorn behind `serve`'s front: no peer address; the front's X-Forwarded-For is the client."""
    s = Sources(parse_allowed_sources("commercelayer"))
    assert s.allows("", EU)
    assert not s.allows("", "198.51.100.7")
    assert not s.allows("", "")  # nobody said who it is
    assert s.source("", "") is None
    assert not s.allows("", f"{EU}, 198.51.100.7")  # the front's own entry is the last one


def test_forwarded_for_from_raw_header_lines_joins_repeated_fields():
    lines = [b"Host: t", b"x-forwarded-for: 198.51.100.7", b"X-Forwarded-Proto: http", b"X-Forwarded-For:  54.1.1.1 "]
    assert forwarded_for(lines) == "198.51.100.7,54.1.1.1"
    assert forwarded_for([b"Host: t"]) == ""


def test_settings_read_and_check_both_variables():
    s = Settings.from_env({})
    assert s.allowed_sources == () and s.trusted_proxies == () and not s.sources.enabled
    s = Settings.from_env({"WEBHOOK_APP_ALLOWED_SOURCES": "commercelayer-us", "WEBHOOK_APP_TRUSTED_PROXIES": "::1"})
    assert s.sources.allows("::1", US) and not s.sources.allows("::1", EU)
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({"WEBHOOK_APP_ALLOWED_SOURCES": "commercelayer-asia"})
    assert str(exc.value).startswith("WEBHOOK_APP_ALLOWED_SOURCES: 'commercelayer-asia' is not a CIDR")
    with pytest.raises(ConfigError, match="^WEBHOOK_APP_TRUSTED_PROXIES: has no effect"):
        Settings.from_env({"WEBHOOK_APP_TRUSTED_PROXIES": "10.0.0.0/8"})
    with pytest.raises(ConfigError, match="^WEBHOOK_APP_ALLOWED_SOURCES: behind a proxy"):
        Settings.from_env({"WEBHOOK_APP_ALLOWED_SOURCES": "commercelayer", "WEBHOOK_APP_FORWARDED_HOPS": "1"})


def test_the_nginx_include_lists_the_same_addresses():
    include = (Path(__file__).parent.parent / "deploy" / "nginx" / "commercelayer-sources.conf").read_text()
    allowed = [line.split()[1].rstrip(";") for line in include.splitlines() if line.startswith("allow ")]
    assert sorted(allowed) == sorted(COMMERCELAYER_EU + COMMERCELAYER_US)
    assert include.rstrip().endswith("deny all;")
