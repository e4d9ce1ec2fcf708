"""Which IP addresses a fetch may contact.

Only global unicast addresses are fetched. Python's ``is_global`` and
``is_private`` changed between patch releases, so the IANA special-purpose
registries are written out below (`IPV4_SPECIAL`, `IPV6_SPECIAL`) and an
address must be outside them *and* ``is_global``; IPv6 must moreover lie
in 2000::/3, the only block IANA allocates global unicast from. IPv6
forms that embed an IPv4 address: IPv4-mapped (::ffff:0:0/96) and NAT64
well-known (64:ff9b::/96, what DNS64 answers on IPv6-only hosts) are
judged by the embedded address; IPv4-compatible (::/96), SIIT
(::ffff:0:0:0/96), local-use NAT64 (64:ff9b:1::/48), 6to4 (2002::/16) and
Teredo (2001::/32) are refused whatever they embed: they are deprecated or
local, and where their packets end up is decided by relays, not by us.

The exceptions a policy opens (`FetchPolicy.allowed_networks` and
`FetchPolicy.allow_private`) and the refusal of a whole host when any of
its addresses is not allowed live in `services.fetch`.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IANA IPv4 Special-Purpose Address Registry (RFC 6890 and successors), plus
# multicast and the reserved class E. Nothing in here is ever fetched unless
# the policy opens it.
IPV4_SPECIAL = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, cloud metadata endpoints
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments (DS-Lite, PCP/TURN anycast, NAT64 discovery)
        "192.0.2.0/24",  # documentation TEST-NET-1
        "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation TEST-NET-2
        "203.0.113.0/24",  # documentation TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved
        "255.255.255.255/32",  # limited broadcast
    )
)

# IANA IPv6 Special-Purpose Address Registry, plus the deprecated and
# non-unicast blocks. Most of these also lie outside 2000::/3, which is
# required separately; the table keeps the check explicit either way.
IPV6_SPECIAL = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/128",  # unspecified
        "::1/128",  # loopback
        "::/96",  # IPv4-compatible (deprecated)
        "::ffff:0:0/96",  # IPv4-mapped (judged by the embedded IPv4 before this table)
        "::ffff:0:0:0/96",  # SIIT IPv4-translated
        "64:ff9b::/96",  # NAT64 well-known prefix (judged by the embedded IPv4 before this table)
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "100:0:0:1::/64",  # dummy prefix
        "2001::/23",  # IETF protocol assignments, Teredo 2001::/32 included
        "2001:db8::/32",  # documentation
        "2002::/16",  # 6to4
        "3fff::/20",  # documentation
        "5f00::/16",  # SRv6 SIDs
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
_IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")


def is_public_address(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses (see the module docstring)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public_address(ip.ipv4_mapped)
        if ip in _NAT64_WELL_KNOWN:
            return is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip not in _IPV6_GLOBAL_UNICAST or any(ip in n for n in IPV6_SPECIAL):
            return False
    elif any(ip in n for n in IPV4_SPECIAL):
        return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )
