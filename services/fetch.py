"""Guarded fetching of image bytes from URLs given by strangers.

Rules (DESIGN.md, "Safety of URL fetching"):

* only http(s), and file:// when the policy allows it;
* the host is resolved here and every address is checked *before* connecting,
  and again after each redirect; the connection then goes to the checked
  address (no second DNS lookup that could be rebound to 127.0.0.1);
* loopback, private, link-local, multicast, reserved and unspecified addresses
  are refused unless allowed, including IPv4-mapped/6to4/Teredo IPv6 forms
  and decimal/octal/hex IPv4 spellings (they resolve to the same address);
* at most `max_redirects` redirects, a connect timeout and a total deadline;
* a byte cap enforced while streaming, not only from Content-Length.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from services.errors import (
    BadUrlError,
    BlockedUrlError,
    FetchError,
    FetchTimeoutError,
    TooLargeError,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

DEFAULT_MAX_BYTES = 20 * 1000 * 1000
USER_AGENT = "dmguard/0.1 (+https://github.com/dmguard)"
_REDIRECTS = {301, 302, 303, 307, 308}


@dataclass(frozen=True)
class FetchPolicy:
    """What a fetch may touch and how long and how much it may take."""

    allow_private: bool = False  # every address class below is allowed
    allowed_networks: tuple[
        str, ...
    ] = ()  # CIDRs allowed despite being private, e.g. "127.0.0.1/32"
    allow_file: bool = False
    max_bytes: int = DEFAULT_MAX_BYTES
    max_redirects: int = 3
    connect_timeout_s: float = 5.0
    total_timeout_s: float = 15.0
    _networks: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        nets = tuple(ipaddress.ip_network(n, strict=False) for n in self.allowed_networks)
        object.__setattr__(self, "_networks", nets)

    def address_allowed(self, ip: IPAddress) -> bool:
        if self.allow_private or any(ip in n for n in self._networks if n.version == ip.version):
            return True
        return is_public_address(ip)


def is_public_address(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses."""
    if isinstance(ip, ipaddress.IPv6Address):
        # Addresses that embed an IPv4 address are judged by that address.
        for embedded in (ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None):
            if embedded is not None:
                return is_public_address(embedded)
        if ip in ipaddress.ip_network("64:ff9b::/96"):  # NAT64
            return is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def system_resolver(host: str, port: int) -> list[str]:
    """All addresses `host` resolves to (numeric spellings such as 2130706433 included)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(f"cannot resolve host {host!r}: {exc}") from exc
    return list(dict.fromkeys(info[4][0] for info in infos))


def check_host(host: str, port: int, policy: FetchPolicy, resolver: Resolver) -> str:
    """Resolve `host` and return an address to connect to, refusing the whole
    host if any of its addresses is not allowed (a mixed answer is a classic
    rebinding trick).

    Raises:
        BlockedUrlError: an address is private, loopback, link-local, ...
        FetchError: the host does not resolve.
    """
    addresses = resolver(host, port)
    if not addresses:
        raise FetchError(f"host {host!r} has no addresses")
    for text in addresses:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
        if not policy.address_allowed(ip):
            raise BlockedUrlError(f"host {host!r} resolves to non-public address {ip}")
    return addresses[0]


def parse_url(url: str, policy: FetchPolicy) -> tuple[str, str, int, str]:
    """Split and check a URL: (scheme, host, port, path-with-query)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise BadUrlError(f"malformed URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme == "file":
        if not policy.allow_file:
            raise BadUrlError("file:// URLs are not allowed (serve with --allow-file-urls)")
        return scheme, "", 0, unquote(parts.path)
    if scheme not in ("http", "https"):
        raise BadUrlError(f"unsupported URL scheme {parts.scheme!r}: only http and https")
    host = parts.hostname
    if not host:
        raise BadUrlError("URL has no host")
    if parts.username or parts.password:
        raise BadUrlError("URLs with credentials are not fetched")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return scheme, host, port or (443 if scheme == "https" else 80), path


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to an address checked in advance, whatever `host` resolves to now."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.live_socket = self.sock


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    default_port = 443

    def connect(self) -> None:
        super().connect()
        context = ssl.create_default_context()
        self.sock = context.wrap_socket(self.sock, server_hostname=self.host)
        self.live_socket = self.sock  # kept: http.client drops .sock when the response owns it


def _read_capped(chunks: Iterable[bytes], max_bytes: int, deadline: float, url: str) -> bytes:
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        if len(buf) > max_bytes:
            raise TooLargeError(f"{url} is larger than {max_bytes} bytes")
        if time.monotonic() > deadline:
            raise FetchTimeoutError(f"{url} took longer than the total timeout")
    return bytes(buf)


def _http_chunks(resp: http.client.HTTPResponse, sock: socket.socket, deadline: float):
    while True:
        sock.settimeout(max(0.05, deadline - time.monotonic()))  # no read outlives the deadline
        chunk = resp.read1(64 * 1024)
        if not chunk:
            return
        yield chunk


def fetch_bytes(url: str, policy: FetchPolicy, *, resolver: Resolver = system_resolver) -> bytes:
    """Fetch the body at `url` under `policy`.

    Raises:
        InputError subclasses with DESIGN.md's codes: bad_url, blocked_url,
        fetch_failed, timeout, too_large.
    """
    deadline = time.monotonic() + policy.total_timeout_s
    for _hop in range(policy.max_redirects + 1):
        scheme, host, port, path = parse_url(url, policy)
        if scheme == "file":
            return _read_file(path, policy)
        address = check_host(host, port, policy, resolver)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchTimeoutError(f"{url}: total timeout before connecting")
        cls = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
        conn = cls(host, port, address, timeout=min(policy.connect_timeout_s, remaining))
        try:
            conn.request("GET", path, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
            resp = conn.getresponse()
            if resp.status in _REDIRECTS:
                location = resp.getheader("Location")
                if not location:
                    raise FetchError(f"{url}: HTTP {resp.status} without Location")
                url = urljoin(url, location)
                continue
            if resp.status != 200:
                raise FetchError(f"{url}: HTTP {resp.status} {resp.reason}")
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and int(length) > policy.max_bytes:
                raise TooLargeError(f"{url}: Content-Length {length} > {policy.max_bytes} bytes")
            chunks = _http_chunks(resp, conn.live_socket, deadline)
            return _read_capped(chunks, policy.max_bytes, deadline, url)
        except TimeoutError as exc:
            raise FetchTimeoutError(f"{url}: timed out ({exc})") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()
    raise FetchError(f"more than {policy.max_redirects} redirects")


def _read_file(path: str, policy: FetchPolicy) -> bytes:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > policy.max_bytes:
            raise TooLargeError(f"{path} is {size} bytes, more than {policy.max_bytes}")
        with p.open("rb") as f:
            return f.read(policy.max_bytes + 1)
    except OSError as exc:
        raise FetchError(f"cannot read {path}: {exc}") from exc
