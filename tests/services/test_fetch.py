import ipaddress

import pytest

from services.errors import (
    BadUrlError,
    BlockedUrlError,
    FetchError,
    FetchTimeoutError,
    TooLargeError,
)
from services.fetch import FetchPolicy, check_host, fetch_bytes, is_public_address, system_resolver
from tests.images import jpeg


@pytest.mark.parametrize(
    "address, public",
    [
        ("8.8.8.8", True),
        ("93.184.216.34", True),
        ("2606:4700:4700::1111", True),
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
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("::ffff:10.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("2002:7f00:1::", False),  # 6to4 wrapping 127.0.0.1
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
    ],
)
def test_address_classes(address, public):
    assert is_public_address(ipaddress.ip_address(address)) is public


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
