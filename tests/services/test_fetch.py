import ipaddress
import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services import addresses, fetch
from services.addresses import is_public_address
from services.errors import (
    BadUrlError,
    BlockedUrlError,
    FetchError,
    FetchTimeoutError,
    InputError,
    TooLargeError,
)
from services.fetch import FetchPolicy, check_host, fetch_bytes, system_resolver
from services.urls import parse_url
from tests.conftest import ImageServer
from tests.images import jpeg

FETCH_CODES = {"bad_url", "blocked_url", "fetch_failed", "timeout", "too_large"}
LOCAL = ("127.0.0.1/32",)


@pytest.fixture(autouse=True)
def only_local_connections(monkeypatch):
    """No test of this file ever connects outside 127.0.0.1 / ::1: any other
    connection attempt is refused, and recorded so that tests can assert on it."""
    attempts: list[str] = []
    real = fetch._create_connection

    def guarded(address, *args, **kwargs):
        attempts.append(address[0])
        if address[0] not in ("127.0.0.1", "::1"):
            raise ConnectionRefusedError(f"test refuses to connect to {address[0]}")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(fetch, "_create_connection", guarded)
    return attempts


@pytest.mark.parametrize(
    "address, public",
    [
        ("8.8.8.8", True),
        ("93.184.216.34", True),
        ("1.1.1.1", True),
        ("2606:4700:4700::1111", True),
        ("2a00:1450:4001:81b::200e", True),
        ("127.0.0.1", False),
        ("127.255.0.9", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("169.254.169.254", False),  # cloud metadata
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("192.0.0.9", False),  # IETF protocol assignments
        ("192.88.99.1", False),  # 6to4 relay anycast
        ("198.18.0.1", False),  # benchmarking
        ("198.51.100.7", False),  # documentation
        ("203.0.113.7", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("fec0::1", False),  # site-local: is_global is True on some Pythons
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("::ffff:10.0.0.1", False),
        ("::ffff:8.8.8.8", True),  # IPv4-mapped: judged by the IPv4 inside
        ("64:ff9b::808:808", True),  # NAT64 (DNS64) of a public IPv4
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("64:ff9b:1::808:808", False),  # local-use NAT64: refused whatever it embeds
        ("2002:7f00:1::", False),  # 6to4 wrapping 127.0.0.1
        ("2002:808:808::1", False),  # 6to4: refused whatever it embeds
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
        ("::127.0.0.1", False),  # IPv4-compatible
        ("::8.8.8.8", False),  # IPv4-compatible: deprecated, refused
        ("2001:db8::1", False),
        ("3fff::1", False),  # documentation (2024)
        ("5f00::1", False),  # SRv6 SIDs
        ("100::1", False),  # discard-only
        ("4000::1", False),  # outside 2000::/3
    ],
)
def test_address_classes(address, public):
    assert is_public_address(ipaddress.ip_address(address)) is public


@given(st.ip_addresses(v=4))
def test_ipv6_forms_are_never_more_public_than_the_ipv4_they_embed(ip4):
    n = int(ip4)
    forms = [
        ipaddress.IPv6Address((0xFFFF << 32) | n),  # IPv4-mapped
        ipaddress.IPv6Address((0x64FF9B << 96) | n),  # NAT64 well-known
    ]
    for form in forms:
        assert is_public_address(form) is is_public_address(ip4)
    always_refused = [
        ipaddress.IPv6Address(n),  # IPv4-compatible
        ipaddress.IPv6Address((0x2002 << 112) | (n << 80)),  # 6to4
        ipaddress.IPv6Address((0x20010000 << 96) | (n ^ 0xFFFFFFFF)),  # Teredo client
        ipaddress.IPv6Address((0x0064FF9B0001 << 80) | n),  # local-use NAT64
    ]
    assert not any(is_public_address(form) for form in always_refused)
    for net in addresses.IPV4_SPECIAL:
        if ip4 in net:
            assert not is_public_address(ip4)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "127.1",
        "localhost",
        "[::1]",
        "[::ffff:127.0.0.1]",
    ],
)
def test_numeric_spellings_of_loopback_are_blocked(host):
    # Resolved by the system resolver exactly as the connection would be.
    with pytest.raises(BlockedUrlError):
        fetch_bytes(f"http://{host}:9/x.jpg", FetchPolicy())


def test_a_host_with_any_private_address_is_refused():
    resolver = lambda host, port: ["8.8.8.8", "10.0.0.5"]  # noqa: E731 (DNS-rebinding style answer)
    with pytest.raises(BlockedUrlError):
        check_host("evil.example", 80, FetchPolicy(), resolver)
    assert check_host("ok.example", 80, FetchPolicy(), lambda h, p: ["8.8.8.8"]) == "8.8.8.8"


def test_allowed_networks_open_exactly_those_addresses():
    policy = FetchPolicy(allowed_networks=("127.0.0.1/32",))
    assert check_host("127.0.0.1", 80, policy, system_resolver) == "127.0.0.1"
    with pytest.raises(BlockedUrlError):
        check_host("127.0.0.2", 80, policy, system_resolver)


@pytest.mark.parametrize(
    "url, error",
    [
        ("ftp://example.com/x.jpg", BadUrlError),
        ("javascript:alert(1)", BadUrlError),
        ("http://", BadUrlError),
        ("http://user:pw@example.com/x", BadUrlError),
        ("http://example.com:99999/x", BadUrlError),
        ("file:///etc/passwd", BadUrlError),
    ],
)
def test_malformed_and_unsupported_urls(url, error):
    with pytest.raises(error):
        fetch_bytes(url, FetchPolicy())


def test_fetch_from_allowed_local_server(image_server):
    body = jpeg()
    image_server.routes["/a.jpg"] = body
    policy = FetchPolicy(allowed_networks=("127.0.0.1/32",))
    assert fetch_bytes(image_server.url("/a.jpg"), policy) == body
    assert fetch_bytes(image_server.url("/chunked/a.jpg"), policy) == body
    with pytest.raises(FetchError, match="404"):
        fetch_bytes(image_server.url("/missing.jpg"), policy)


def test_redirects_are_followed_checked_and_capped(image_server):
    image_server.routes["/a.jpg"] = b"\xff\xd8\xffdata"
    policy = FetchPolicy(allowed_networks=("127.0.0.1/32",))
    target = image_server.url("/a.jpg")
    assert fetch_bytes(image_server.url(f"/redirect?to={target}"), policy) == b"\xff\xd8\xffdata"
    # A redirect into address space the policy does not allow is refused before connecting.
    private = f"http://127.0.0.2:{image_server.port}/a.jpg"
    before = len(image_server.hits)
    with pytest.raises(BlockedUrlError):
        fetch_bytes(image_server.url(f"/redirect?to={private}"), policy)
    assert [h.split("?")[0] for h in image_server.hits[before:]] == ["/redirect"]
    chain = target
    for _ in range(4):
        chain = image_server.url(f"/redirect?to={chain}")
    with pytest.raises(FetchError, match="redirects"):
        fetch_bytes(chain, policy)


def test_byte_cap_from_header_and_while_streaming(image_server):
    image_server.routes["/big"] = b"\xff\xd8\xff" + b"\x00" * 300_000
    policy = FetchPolicy(allowed_networks=("127.0.0.1/32",), max_bytes=100_000)
    with pytest.raises(TooLargeError, match="Content-Length"):
        fetch_bytes(image_server.url("/big"), policy)
    with pytest.raises(TooLargeError):  # no Content-Length: the cap holds while reading
        fetch_bytes(image_server.url("/chunked/big"), policy)


def test_total_timeout_stops_a_slow_drip(image_server):
    policy = FetchPolicy(allowed_networks=("127.0.0.1/32",), total_timeout_s=1.0)
    with pytest.raises(FetchTimeoutError):
        fetch_bytes(image_server.url("/drip"), policy)
    image_server.routes["/a"] = b"x"
    with pytest.raises(FetchTimeoutError):
        fetch_bytes(
            image_server.url("/slow/a"),
            FetchPolicy(allowed_networks=("127.0.0.1/32",), total_timeout_s=0.3),
        )


def test_file_urls_only_when_allowed(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_bytes(b"\xff\xd8\xffabc")
    with pytest.raises(BadUrlError):
        fetch_bytes(p.as_uri(), FetchPolicy())
    assert fetch_bytes(p.as_uri(), FetchPolicy(allow_file=True)) == b"\xff\xd8\xffabc"
    with pytest.raises(TooLargeError):
        fetch_bytes(p.as_uri(), FetchPolicy(allow_file=True, max_bytes=3))


# --------------------------------------------------------------------------- hostile corpus

BODY = b"\xff\xd8\xffplain"
CAFE = b"\xff\xd8\xffcafe"
SPACE = b"\xff\xd8\xffspace"
PERCENT = b"\xff\xd8\xffpercent"
LATIN = b"\xff\xd8\xfflatin"
SECRET = b"TOPSECRET-local-file-bytes"

ROUTES = {
    "/a.jpg": BODY,
    "/caf%C3%A9.jpg": CAFE,
    "/a%20b.jpg": SPACE,
    "/100%25.jpg": PERCENT,
    "/caf%E9.jpg": LATIN,
    "/big": b"\xff\xd8\xff" + b"\x00" * 300_000,
}

RAW = {
    "bad-length": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nabc",
    "negative-length": b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\nabc",
    "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "huge-length": b"HTTP/1.1 200 OK\r\nContent-Length: 1" + b"0" * 40 + b"\r\n\r\nabc",
    "gzip-te": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "bad-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc",
    "no-last-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    "http10-until-eof": b"HTTP/1.0 200 OK\r\n\r\nuntil-eof",
    "long-header": b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n",
    "many-headers": b"HTTP/1.1 200 OK\r\n" + b"X-H: 1\r\n" * 150 + b"\r\n",
    "no-content": b"HTTP/1.1 204 No Content\r\n\r\n",
    "bad-status-code": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    "two-locations": b"HTTP/1.1 302 Found\r\nLocation: /a.jpg\r\nLocation: /b.jpg\r\n\r\n",
    "empty-location": b"HTTP/1.1 302 Found\r\nLocation:    \r\nContent-Length: 0\r\n\r\n",
}


def _resolver(host: str, port: int):
    names = {
        "loopback.test": ["127.0.0.1"],
        "xn--bcher-kva.test": ["127.0.0.1"],
        "private.test": ["10.0.0.1"],
        "rebind.test": ["127.0.0.1", "10.0.0.5"],
        "v6loop.test": ["::1"],
        "metadata.test": ["169.254.169.254"],
        "empty.test": [],
        "garbage.test": ["not-an-address"],
        "string.test": "127.0.0.1",  # not a list
    }
    if host == "slow.test":
        time.sleep(4)
        return ["127.0.0.1"]
    if host == "broken.test":
        raise RuntimeError("a resolver with a bug")
    if host in names:
        return names[host]
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def case(url, expected, **policy):
    return (url, expected, policy)


URL_FORMS = {
    "scheme-ftp": case("ftp://loopback.test/x.jpg", "bad_url"),
    "scheme-javascript": case("javascript:alert(1)", "bad_url"),
    "scheme-gopher": case("gopher://127.0.0.1:{port}/", "bad_url"),
    "scheme-data": case("data:image/png;base64,iVBORw0KGgo=", "bad_url"),
    "scheme-relative": case("//127.0.0.1:{port}/a.jpg", "bad_url"),
    "no-scheme": case("127.0.0.1:{port}/a.jpg", "bad_url"),
    "empty": case("", "bad_url"),
    "only-scheme": case("http://", "bad_url"),
    "empty-host": case("http:///a.jpg", "bad_url"),
    "empty-host-port": case("http://:{port}/a.jpg", "bad_url"),
    "backslashes": case("http:\\\\127.0.0.1\\a.jpg", "bad_url"),
    "credentials": case("http://user:pw@127.0.0.1:{port}/a.jpg", "bad_url"),
    "empty-userinfo": case("http://@127.0.0.1:{port}/a.jpg", "bad_url"),
    "backslash-at": case("http://127.0.0.1:{port}\\@private.test/a.jpg", "bad_url"),
    "port-too-big": case("http://127.0.0.1:99999/a.jpg", "bad_url"),
    "port-zero": case("http://127.0.0.1:0/a.jpg", "bad_url"),
    "port-negative": case("http://127.0.0.1:-1/a.jpg", "bad_url"),
    "port-letters": case("http://127.0.0.1:8o/a.jpg", "bad_url"),
    "port-arabic-digits": case("http://127.0.0.1:\u0668\u0660/a.jpg", "bad_url"),
    "port-twice": case("http://127.0.0.1:{port}:{port}/a.jpg", "bad_url"),
    "crlf-injection": case("{srv}/a.jpg\r\nX-Injected: 1", "bad_url"),
    "nul-in-path": case("{srv}/a\x00.jpg", "bad_url"),
    "tab-in-host": case("http://127.0.\t0.1:{port}/a.jpg", "bad_url"),
    "lf-at-end": case("{srv}/a.jpg\n", "bad_url"),
    "cr-at-start": case("\r{srv}/a.jpg", "bad_url"),
    "del": case("{srv}/a\x7f.jpg", "bad_url"),
    "c1-control": case("{srv}/a\x85.jpg", "bad_url"),
    "lone-surrogate": case("{srv}/a\ud800.jpg", "bad_url"),
    "not-a-string": case(None, "bad_url"),
    "bytes": case(b"http://127.0.0.1/a.jpg", "bad_url"),
    "very-long-url": case("{srv}/" + "a" * 9000, "bad_url"),
    "long-once-encoded": case("{srv}/" + "\U0001f600" * 1000, "bad_url"),
    "very-long-host": case("http://" + ".".join(["a" * 63] * 5) + "/a.jpg", "bad_url"),
    "label-too-long": case("http://" + "a" * 64 + ".test/a.jpg", "bad_url"),
    "empty-label": case("http://loopback..test/a.jpg", "bad_url"),
    "percent-host": case("http://%31%32%37.0.0.1:{port}/a.jpg", "bad_url"),
    "space-in-host": case("http://loop back.test/a.jpg", "bad_url"),
    "idna-fails": case("http://\u00e4" + "\u00f6" * 70 + ".test/a.jpg", "bad_url"),
    "fullwidth-colon": case("http://loopback.test\uff1a{port}/a.jpg", "bad_url"),
    "iri-path": case("{srv}/caf\u00e9.jpg", CAFE),
    "space-in-path": case("{srv}/a b.jpg", SPACE),
    "escapes-kept": case("{srv}/caf%C3%A9.jpg", CAFE),
    "stray-percent": case("{srv}/100%.jpg", PERCENT),
    "idn-host": case("http://b\u00fccher.test:{port}/a.jpg", BODY),
    "fullwidth-host": case("http://\uff2c\uff2f\uff2f\uff30back.test:{port}/a.jpg", BODY),
    "upper-case": case("HTTP://LOOPBACK.TEST:{port}/a.jpg", BODY),
    "fragment-dropped": case("{srv}/a.jpg#frag", BODY),
    "spaces-around": case("  {srv}/a.jpg  ", BODY),
    "ipv6-loopback": case("http://[::1]:{port}/a.jpg", "blocked_url"),
    "decimal-ip-allowed": case("http://2130706433:{port}/a.jpg", BODY),
    "decimal-ip-blocked": case("http://2130706434:{port}/a.jpg", "blocked_url"),
    "hex-ip": case("http://0x7f000002:{port}/a.jpg", "blocked_url"),
    "octal-ip": case("http://0177.0.0.2:{port}/a.jpg", "blocked_url"),
    "short-ip": case("http://127.2:{port}/a.jpg", "blocked_url"),
    "hex-dotted-ip": case("http://0x7f.0.0.1:{port}/a.jpg", BODY),
    "ip-trailing-dot": case("http://127.0.0.1.:{port}/a.jpg", BODY),
    "fullwidth-ip": case("http://\uff11\uff12\uff17.0.0.2:{port}/a.jpg", "blocked_url"),
    "ip-octet-256": case("http://256.0.0.1/a.jpg", "bad_url"),
    "ip-five-parts": case("http://1.2.3.4.5/a.jpg", "bad_url"),
    "ip-bad-hex": case("http://0x1g.0.0.1/a.jpg", "bad_url"),
    "ip-bad-octal": case("http://09.0.0.1/a.jpg", "bad_url"),
    "name-ending-in-number": case("http://example.123/a.jpg", "bad_url"),
    "zone-id": case("http://[fe80::1%25eth0]:{port}/a.jpg", "bad_url"),
    "zone-id-loopback": case("http://[::1%251]:{port}/a.jpg", "bad_url"),
    "ipv4-in-brackets": case("http://[127.0.0.1]:{port}/a.jpg", "bad_url"),
    "ipvfuture": case("http://[v1.loopback.test]/a.jpg", "bad_url"),
    "unclosed-bracket": case("http://[::1/a.jpg", "bad_url"),
    "junk-after-bracket": case("http://[::1]junk:{port}/a.jpg", "bad_url"),
    "junk-before-bracket": case("http://x[::1]:{port}/a.jpg", "bad_url"),
}

ADDRESSES = [
    "0.1.2.3",
    "0.0.0.0",
    "10.0.0.1",
    "100.64.0.1",
    "127.0.0.2",
    "169.254.169.254",
    "172.16.0.1",
    "172.31.255.255",
    "192.0.0.9",
    "192.0.0.170",
    "192.0.2.1",
    "192.88.99.1",
    "192.168.0.1",
    "198.18.0.1",
    "198.19.255.255",
    "198.51.100.1",
    "203.0.113.1",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "[::]",
    "[::1]",
    "[::ffff:127.0.0.2]",
    "[::ffff:10.0.0.1]",
    "[::ffff:0:7f00:1]",  # SIIT
    "[::127.0.0.1]",  # IPv4-compatible
    "[::8.8.8.8]",  # IPv4-compatible, public inside: still refused
    "[64:ff9b::a00:1]",
    "[64:ff9b::7f00:1]",
    "[64:ff9b:1::a00:1]",
    "[64:ff9b:1::808:808]",
    "[100::1]",
    "[2001::1]",
    "[2001:0:4136:e378:8000:63bf:3fff:fdd2]",  # Teredo
    "[2001:0:4136:e378:8000:63bf:80ff:fffe]",  # Teredo client 127.0.0.1
    "[2001:db8::1]",
    "[2002:7f00:1::1]",
    "[2002:808:808::1]",
    "[3fff::1]",
    "[5f00::1]",
    "[fc00::1]",
    "[fd12:3456::1]",
    "[fe80::1]",
    "[febf::1]",
    "[fec0::1]",
    "[ff02::1]",
    "[ff0e::1]",
]
ADDRESS_CASES = {f"address-{a}": case(f"http://{a}/a.jpg", "blocked_url") for a in ADDRESSES}

NAMES = {
    "name-private": case("http://private.test/a.jpg", "blocked_url"),
    "name-rebinding": case("http://rebind.test:{port}/a.jpg", "blocked_url"),
    "name-v6-loopback": case("http://v6loop.test:{port}/a.jpg", "blocked_url"),
    "name-metadata": case("http://metadata.test/latest/meta-data/", "blocked_url"),
    "name-no-addresses": case("http://empty.test/a.jpg", "fetch_failed"),
    "name-garbage-answer": case("http://garbage.test/a.jpg", "fetch_failed"),
    "name-string-answer": case("http://string.test/a.jpg", "fetch_failed"),
    "name-unknown": case("http://unknown.test/a.jpg", "fetch_failed"),
    "name-resolver-bug": case("http://broken.test/a.jpg", "fetch_failed"),
    "name-slow-resolver": case("http://slow.test:{port}/a.jpg", "timeout", total_timeout_s=1.0),
    "name-allowed": case("http://loopback.test:{port}/a.jpg", BODY),
}

REDIRECTS = {
    "chain-at-max": case("{srv}/redirect-chain?n=3", b"chain-end", max_redirects=3),
    "chain-over-max": case("{srv}/redirect-chain?n=4", "fetch_failed", max_redirects=3),
    "chain-none-allowed": case("{srv}/redirect-chain?n=1", "fetch_failed", max_redirects=0),
    "chain-none-needed": case("{srv}/redirect-chain?n=0", b"chain-end", max_redirects=0),
    "to-ipv6-loopback": case("{srv}/redirect?to=http://[::1]:{port}/a.jpg", "blocked_url"),
    "to-127.0.0.2": case("{srv}/redirect?to=http://127.0.0.2:{port}/a.jpg", "blocked_url"),
    "to-decimal-ip": case("{srv}/redirect?to=http://2130706434:{port}/a.jpg", "blocked_url"),
    "to-private-name": case("{srv}/redirect?to=http://private.test/a.jpg", "blocked_url"),
    "to-file": case("{srv}/redirect?to=file://{tmp}/secret.txt", "blocked_url", allow_file=True),
    "to-file-relative": case("{srv}/redirect?to=file:secret.txt", "blocked_url", allow_file=True),
    "to-ftp": case("{srv}/redirect?to=ftp://127.0.0.1:{port}/a.jpg", "blocked_url"),
    "to-javascript": case("{srv}/redirect?to=javascript:alert(1)", "blocked_url"),
    "to-data": case("{srv}/redirect?to=data:,hello", "blocked_url"),
    "to-credentials": case("{srv}/redirect?to=http://u:p@127.0.0.1:{port}/a.jpg", "bad_url"),
    "to-port-zero": case("{srv}/redirect?to=http://127.0.0.1:0/a.jpg", "bad_url"),
    "relative": case("{srv}/redirect?to=a.jpg", BODY),
    "absolute-path": case("{srv}/redirect?to=/a.jpg", BODY),
    "scheme-relative": case("{srv}/redirect?to=//127.0.0.1:{port}/a.jpg", BODY),
    "dot-segments": case("{srv}/redirect?to=/x/../a.jpg", BODY),
    "without-location": case("{srv}/redirect-nolocation", "fetch_failed"),
    "empty-location": case("{srv}/raw/empty-location", "fetch_failed"),
    "two-locations": case("{srv}/raw/two-locations", "fetch_failed"),
    "utf8-location": case("{srv}/redirect-raw?to=/caf%C3%A9.jpg", CAFE),
    "latin1-location": case("{srv}/redirect-raw?to=/caf%E9.jpg", LATIN),
    "space-in-location": case("{srv}/redirect-raw?to=/a%20b.jpg", SPACE),
    "nul-in-location": case("{srv}/redirect-raw?to=/a%00.jpg", "bad_url"),
    "tab-in-location": case("{srv}/redirect-raw?to=/a%09b.jpg", "bad_url"),
    "idn-location": case("{srv}/redirect-raw?to=http://b%C3%BCcher.test:{port}/a.jpg", BODY),
    "long-location": case("{srv}/redirect?to=/" + "a" * 9000, "bad_url"),
}

HTTP = {
    "slow-status": case("{srv}/slow-status", "timeout", total_timeout_s=1.0),
    "slow-headers": case("{srv}/slow-headers", "timeout", total_timeout_s=1.0),
    "slow-body": case("{srv}/drip", "timeout", total_timeout_s=1.0),
    "short-body": case("{srv}/short-body", "fetch_failed"),
    "cut-chunked": case("{srv}/cut-chunked", "fetch_failed"),
    "no-last-chunk": case("{srv}/raw/no-last-chunk", "fetch_failed"),
    "bad-chunk-size": case("{srv}/raw/bad-chunk-size", "fetch_failed"),
    "cap-content-length": case("{srv}/big", "too_large", max_bytes=100_000),
    "cap-streaming": case("{srv}/chunked/big", "too_large", max_bytes=100_000),
    "cap-exact": case("{srv}/a.jpg", BODY, max_bytes=len(BODY)),
    "cap-one-short": case("{srv}/a.jpg", "too_large", max_bytes=len(BODY) - 1),
    "http-500": case("{srv}/status?code=500", "fetch_failed"),
    "http-404": case("{srv}/missing.jpg", "fetch_failed"),
    "http-204": case("{srv}/raw/no-content", "fetch_failed"),
    "http-304": case("{srv}/status?code=304", "fetch_failed"),
    "status-out-of-range": case("{srv}/raw/bad-status-code", "fetch_failed"),
    "garbage-status": case("{srv}/garbage-status", "fetch_failed"),
    "hangup": case("{srv}/hangup", "fetch_failed"),
    "bad-content-length": case("{srv}/raw/bad-length", "fetch_failed"),
    "negative-content-length": case("{srv}/raw/negative-length", "fetch_failed"),
    "two-content-lengths": case("{srv}/raw/two-lengths", "fetch_failed"),
    "huge-content-length": case("{srv}/raw/huge-length", "fetch_failed"),
    "gzip-transfer-encoding": case("{srv}/raw/gzip-te", "fetch_failed"),
    "long-header-line": case("{srv}/raw/long-header", "fetch_failed"),
    "too-many-headers": case("{srv}/raw/many-headers", "fetch_failed"),
    "body-until-eof": case("{srv}/raw/http10-until-eof", b"until-eof"),
    "tls-to-plain-server": case("https://127.0.0.1:{port}/a.jpg", "fetch_failed"),
    "connection-refused": case("http://127.0.0.1:{closed}/a.jpg", "fetch_failed"),
}

FILES = {
    "file-not-allowed": case("file://{tmp}/secret.txt", "bad_url"),
    "file-allowed": case("file://{tmp}/secret.txt", SECRET, allow_file=True),
    "file-localhost": case("file://localhost{tmp}/secret.txt", SECRET, allow_file=True),
    "file-other-host": case("file://example.com/etc/passwd", "bad_url", allow_file=True),
    "file-relative": case("file:secret.txt", "bad_url", allow_file=True),
    "file-nul": case("file://{tmp}/secret%00.txt", "bad_url", allow_file=True),
    "file-missing": case("file://{tmp}/missing.jpg", "fetch_failed", allow_file=True),
    "file-directory": case("file://{tmp}", "fetch_failed", allow_file=True),
    "file-device": case("file:///dev/zero", "fetch_failed", allow_file=True),
    "file-too-large": case("file://{tmp}/secret.txt", "too_large", allow_file=True, max_bytes=3),
}

CORPUS = {**URL_FORMS, **ADDRESS_CASES, **NAMES, **REDIRECTS, **HTTP, **FILES}


@pytest.fixture(scope="module")
def hostile_server():
    """One server for the whole corpus (starting and stopping one per case is slow)."""
    server = ImageServer()
    server.routes.update(ROUTES)
    server.raw.update(RAW)
    yield server
    server.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _expand(url, server, tmp_path):
    if not isinstance(url, str):
        return url
    for token, value in {
        "{srv}": f"http://127.0.0.1:{server.port}",
        "{port}": str(server.port),
        "{tmp}": tmp_path.as_posix(),
        "{closed}": str(_closed_port()),
    }.items():
        url = url.replace(token, value)
    return url


@pytest.mark.parametrize("url, expected, overrides", list(CORPUS.values()), ids=list(CORPUS))
def test_hostile_corpus(hostile_server, tmp_path, only_local_connections, url, expected, overrides):
    (tmp_path / "secret.txt").write_bytes(SECRET)
    settings_ = {"allowed_networks": LOCAL, "connect_timeout_s": 2.0, "total_timeout_s": 5.0}
    policy = FetchPolicy(**{**settings_, **overrides})
    url = _expand(url, hostile_server, tmp_path)
    start = time.monotonic()
    try:
        outcome = fetch_bytes(url, policy, resolver=_resolver)
    except InputError as exc:
        outcome = exc
    elapsed = time.monotonic() - start
    if isinstance(expected, bytes):
        assert outcome == expected
    else:
        assert isinstance(outcome, InputError), f"expected {expected}, got {outcome!r}"
        assert outcome.code == expected, f"{outcome.code}: {outcome}"
        assert not isinstance(outcome, fetch._UnexpectedFetchError), repr(outcome.__cause__)
        assert SECRET.decode() not in str(outcome)
    # Generous: this machine is noisy, but a fetch never runs far past its budget.
    assert elapsed < policy.total_timeout_s + 2.0
    assert set(only_local_connections) <= {"127.0.0.1", "::1"}


def test_corpus_is_large_and_uses_only_fetch_codes():
    assert len(CORPUS) >= 45
    codes = {e for _, e, _ in CORPUS.values() if isinstance(e, str)}
    assert codes == FETCH_CODES


# --------------------------------------------------------------------------- details


def test_iris_are_percent_encoded():
    policy = FetchPolicy()
    assert parse_url("http://B\u00fccher.example/a b/caf\u00e9?q=\u00e9&r=%41#frag", policy) == (
        "http",
        "xn--bcher-kva.example",
        80,
        "/a%20b/caf%C3%A9?q=%C3%A9&r=%41",
    )
    assert parse_url("https://[::FFFF:8.8.8.8]:8443", policy) == (
        "https",
        "::ffff:808:808",
        8443,
        "/",
    )
    assert parse_url('http://0x08.8.0x8.010/%zz"<>', policy) == (
        "http",
        "8.8.8.8",
        80,
        "/%25zz%22%3C%3E",
    )


def test_the_server_sees_the_encoded_path(hostile_server):
    policy = FetchPolicy(allowed_networks=LOCAL)
    assert fetch_bytes(hostile_server.url("/caf\u00e9.jpg"), policy) == CAFE
    assert fetch_bytes(hostile_server.url("/a b.jpg"), policy) == SPACE
    assert hostile_server.hits[-2:] == ["/caf%C3%A9.jpg", "/a%20b.jpg"]


def test_redirect_to_a_file_never_reads_it(hostile_server, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    policy = FetchPolicy(allowed_networks=LOCAL, allow_file=True)
    url = hostile_server.url(f"/redirect?to={secret.as_uri()}")
    with pytest.raises(BlockedUrlError) as info:
        fetch_bytes(url, policy)
    assert SECRET.decode() not in str(info.value)
    assert fetch_bytes(secret.as_uri(), policy) == SECRET  # directly: allowed


@pytest.mark.parametrize("path", ["/slow-status", "/slow-headers"])
def test_a_server_dripping_its_head_is_cut_at_the_deadline(hostile_server, path):
    policy = FetchPolicy(allowed_networks=LOCAL, total_timeout_s=1.0)
    start = time.monotonic()
    with pytest.raises(FetchTimeoutError):
        fetch_bytes(hostile_server.url(path), policy)
    assert time.monotonic() - start < 1.0 + 2.0


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_silent_server_is_cut_at_the_deadline(scheme):
    with socket.socket() as listener:  # accepts connections (backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        policy = FetchPolicy(allowed_networks=LOCAL, total_timeout_s=1.0, connect_timeout_s=5.0)
        start = time.monotonic()
        with pytest.raises(FetchTimeoutError):
            fetch_bytes(f"{scheme}://127.0.0.1:{port}/a.jpg", policy)
        assert time.monotonic() - start < 1.0 + 2.0


def test_a_hung_resolver_costs_a_pool_thread_not_the_fetch(hostile_server):
    release = threading.Event()

    def hung(host, port):
        release.wait(30)
        return ["127.0.0.1"]

    policy = FetchPolicy(allowed_networks=LOCAL, total_timeout_s=0.5)
    try:
        for _ in range(3):
            start = time.monotonic()
            with pytest.raises(FetchTimeoutError):
                fetch_bytes("http://hung.test/a.jpg", policy, resolver=hung)
            assert time.monotonic() - start < 0.5 + 2.0
        # Other fetches still resolve meanwhile.
        ok = FetchPolicy(allowed_networks=LOCAL)
        assert fetch_bytes(hostile_server.url("/a.jpg"), ok, resolver=_resolver) == BODY
    finally:
        release.set()


def test_check_host_times_out_a_slow_resolver():
    def slow(host, port):
        time.sleep(3)
        return ["8.8.8.8"]

    start = time.monotonic()
    with pytest.raises(FetchTimeoutError):
        check_host("slow.example", 80, FetchPolicy(), slow, timeout=0.3)
    assert time.monotonic() - start < 0.3 + 2.0


# --------------------------------------------------------------------------- properties

_CLEAN_PIECES = st.sampled_from(
    [
        "",
        "/",
        "//",
        ":",
        "@",
        "[",
        "]",
        "%",
        "%2",
        "%41",
        "%00",
        "%zz",
        "?",
        "#",
        "\\",
        ".",
        "..",
        "0x",
        "0",
        "::",
        "%25",
        " ",
        "\u00e9",
        "xn--",
        "xn--a",
        "localhost",
        "127.0.0.1",
        "::1",
        "[::1]",
        "2130706433",
        "\uff45",
        "\u3002",
        "\u200b",
        "\u0660",
        "\uff1a",
        "\ufe57",
        "http://",
        "https://",
        "file://",
        "ftp://",
        "javascript:",
        "user:pw@",
        "8.8.8.8",
        "example.com",
        "a.jpg",
    ]
)
_DIRTY_PIECES = st.sampled_from(["\r", "\n", "\t", "\x00", "\x7f", "\x85", "\ud800", "\udfff"])
_ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=30)  # surrogates, controls
_TEXT = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=20)
_HOSTS = st.one_of(
    _TEXT,
    _CLEAN_PIECES,
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    st.ip_addresses(v=6).map(lambda a: f"[{a}%25eth0]"),
    st.integers(0, 2**33).map(str),
    st.integers(0, 2**32).map(hex),
    st.lists(st.integers(0, 300), min_size=1, max_size=5).map(lambda xs: ".".join(map(str, xs))),
    st.lists(st.integers(0, 300), min_size=1, max_size=5).map(
        lambda xs: ".".join(oct(x).replace("o", "") for x in xs)
    ),
    st.from_regex(r"[a-zA-Z0-9\-_.]{0,70}", fullmatch=True),
    st.from_regex(r"[a-z\u00e0-\u00ff\u3002\uff0e.-]{1,30}", fullmatch=True),
    st.lists(_CLEAN_PIECES | _TEXT, max_size=4).map("".join),
)
_PATHS = st.one_of(
    st.just(""),
    st.lists(_CLEAN_PIECES | _TEXT, max_size=6).map(lambda xs: "/" + "".join(xs)),
    st.lists(_CLEAN_PIECES | _TEXT, max_size=6).map("".join),
)
_URL_SHAPED = st.builds(
    lambda start, user, host, port, path: f"{start}{user}{host}{port}{path}",
    st.sampled_from(
        ["http://"] * 8
        + ["https://"] * 4
        + ["HTTP://", "hTtPs://", "http:", "http:/", "http:///"]
        + ["http:\\\\", "http://\\", "file://", "ftp://", "", "//"]
    ),
    st.one_of(st.just(""), st.just(""), st.just(""), _TEXT.map(lambda t: t + "@")),
    _HOSTS,
    st.one_of(
        st.just(""),
        st.integers(-5, 70_000).map(lambda p: f":{p}"),
        _TEXT.map(lambda t: ":" + t[:6]),
    ),
    _PATHS,
)
_DIRTIED = st.builds(
    lambda url, at, dirt: url[:at] + dirt + url[at:],
    _URL_SHAPED,
    st.integers(0, 100),
    _DIRTY_PIECES,
)
_URLS = st.one_of(
    _ANY_TEXT,
    st.lists(_CLEAN_PIECES | _DIRTY_PIECES | _ANY_TEXT, max_size=8).map("".join),
    _DIRTIED,
    *[_URL_SHAPED] * 5,
)


@settings(
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(url=_URLS)
def test_any_url_ends_in_bytes_or_an_input_error(only_local_connections, url):
    # Every name resolves to a public address and every connection not on
    # 127.0.0.1/::1 is refused by the fixture: nothing leaves this machine.
    policy = FetchPolicy(connect_timeout_s=0.5, total_timeout_s=2.0)
    try:
        fetch_bytes(url, policy, resolver=lambda host, port: ["8.8.8.8"])
    except InputError as exc:
        assert exc.code in FETCH_CODES
        assert not isinstance(exc, fetch._UnexpectedFetchError), repr(exc.__cause__)
    for address in only_local_connections:
        assert is_public_address(ipaddress.ip_address(address))
    only_local_connections.clear()
    try:
        scheme, host, port, path = parse_url(url, policy)
    except InputError as exc:
        assert exc.code == "bad_url"
    else:
        assert scheme in ("http", "https") and 0 < port < 65536
        assert host.isascii() and path.isascii() and path.startswith("/")
        assert not any(c in path for c in " \x00\r\n\t#\x7f")
