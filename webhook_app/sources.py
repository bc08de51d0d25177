"""Who may deliver webhooks: the source allowlist and the proxies whose `X-Forwarded-For` counts.

`WEBHOOK_APP_ALLOWED_SOURCES` names Commerce Layer's published webhook addresses
(`commercelayer`, `commercelayer-eu`, `commercelayer-us`) and CIDRs, IPv4 or IPv6; empty turns the
check off. `WEBHOOK_APP_TRUSTED_PROXIES` (CIDRs) are the hops whose `X-Forwarded-For` is believed.

A delivery's source is its peer's address, unless that peer is a trusted hop: then
`X-Forwarded-For` is walked from the right (the entry the nearest hop added) and the first address
that is not a trusted proxy is the source. Whatever is left of it is the client's own claim and
is never read. A peer that is not an IP address is a Unix socket: a process on this host (a
proxy beside the service) and so a trusted hop. An entry that is not an
address, or no address at all, leaves the source unknown: refused.

Pure (standard library only): the intake (web/intake.py) and `serve`'s front (front.py) both ask
`Sources.allows` before they read a body.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Where Commerce Layer publishes the addresses it calls webhooks from. Check it now and then and
#: keep the lists below (and deploy/nginx/commercelayer-sources.conf) current.
SOURCE_PAGE = "https://docs.commercelayer.io/core/callbacks-security"
COMMERCELAYER_EU = ("54.246.59.198", "99.81.212.137", "54.74.119.33")
COMMERCELAYER_US = ("3.220.172.67", "34.202.177.238", "52.0.55.171")
NAMES: dict[str, tuple[str, ...]] = {
    "commercelayer": COMMERCELAYER_EU + COMMERCELAYER_US,
    "commercelayer-eu": COMMERCELAYER_EU,
    "commercelayer-us": COMMERCELAYER_US,
}

#: the answer's detail: never the address, which the client chose or sent
REFUSED_DETAIL = "deliveries are accepted only from the allowed sources (WEBHOOK_APP_ALLOWED_SOURCES)"


def _network(part: str) -> Network:
    try:
        return ipaddress.ip_network(part, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(part, strict=False)
    except ValueError:
        raise ValueError(f"{part!r} is not an IP address or a CIDR like 203.0.113.0/24 or 2001:db8::/32") from None
    raise ValueError(f"{part!r} has host bits set (did you mean {loose}?)")


def parse_networks(value: str, *, names: bool = False) -> tuple[Network, ...]:
    """Comma-separated addresses and CIDRs (and, with `names`, the NAMES), deduplicated in order."""
    out: list[Network] = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        if part.lower() in NAMES:
            if not names:
                raise ValueError(f"{part!r}: names are for WEBHOOK_APP_ALLOWED_SOURCES; give CIDRs here")
            nets = [ipaddress.ip_network(a) for a in NAMES[part.lower()]]
        elif part[:1].isalpha() and ":" not in part:
            known = f" nor a known name ({', '.join(NAMES)})" if names else ""
            raise ValueError(f"{part!r} is not a CIDR{known}")
        else:
            nets = [_network(part)]
        out += [n for n in nets if n not in out]
    return tuple(out)


def parse_allowed_sources(value: str) -> tuple[Network, ...]:
    """`WEBHOOK_APP_ALLOWED_SOURCES`: `commercelayer`, `commercelayer-eu`, `commercelayer-us`, CIDRs."""
    return parse_networks(value, names=True)


def parse_trusted_proxies(value: str) -> tuple[Network, ...]:
    """`WEBHOOK_APP_TRUSTED_PROXIES`: addresses and CIDRs."""
    return parse_networks(value)


def address(text: str) -> Address | None:
    """One peer or `X-Forwarded-For` entry as an address: `203.0.113.9`, `2001:db8::1`,
    `[2001:db8::1]`, with a `:port` after an IPv4 address or a bracketed IPv6 one; an IPv4 address
    mapped into IPv6 (a dual-stack listener's `::ffff:203.0.113.9`) is the IPv4 one. None for
    anything else (`unknown`, an obfuscated node name, a Unix socket's empty address)."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def forwarded_for(header_lines: Iterable[bytes]) -> str:
    """The `X-Forwarded-For` values among raw `Name: value` header lines, joined by commas in
    order (as a WSGI server joins repeated fields)."""
    values = []
    for line in header_lines:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"x-forwarded-for":
            values.append(value.strip().decode("latin-1"))
    return ",".join(values)


@dataclass(frozen=True)
class Sources:
    """The allowlist (empty: everyone is let in) and the trusted proxies."""

    allowed: tuple[Network, ...] = ()
    trusted: tuple[Network, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.allowed)

    def _trusted(self, ip: Address) -> bool:
        return any(ip in net for net in self.trusted)

    def source(self, peer: str, forwarded_for: str = "") -> Address | None:
        """The address a request comes from (module docstring); None when it cannot be known."""
        hop = address(peer)
        if hop is not None and not self._trusted(hop):
            return hop  # an untrusted peer: its X-Forwarded-For is its own claim
        entries = forwarded_for.split(",") if forwarded_for.strip() else []
        for entry in reversed(entries):
            ip = address(entry)
            if ip is None:
                return None
            if not self._trusted(ip):
                return ip
            hop = ip
        return hop  # every hop a trusted proxy: the farthest one

    def allows(self, peer: str, forwarded_for: str = "") -> bool:
        """Whether a request from `peer` with this `X-Forwarded-For` may deliver."""
        if not self.allowed:
            return True
        ip = self.source(peer, forwarded_for)
        return ip is not None and any(ip in net for net in self.allowed)
