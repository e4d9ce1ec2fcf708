"""Guarded fetching of image bytes from URLs given by strangers.

Every byte of a URL and every byte a server sends is treated as hostile.
`fetch_bytes` either returns the body or raises an `InputError` subclass whose
`code` is one of the dead-letter codes ``bad_url``, ``blocked_url``,
``fetch_failed``, ``timeout`` or ``too_large`` -- nothing else escapes.

URLs (`parse_url`)
    Non-strings, URLs longer than `MAX_URL_CHARS`, lone surrogates and control
    characters anywhere (C0 including TAB/CR/LF/NUL, DEL, C1) are ``bad_url``;
    only spaces around the URL are stripped. IRIs are mapped to URIs as in
    RFC 3987 section 3.1: non-ASCII characters of path and query are
    percent-encoded as UTF-8 (``/café.jpg`` -> ``/caf%C3%A9.jpg``), so are
    spaces and the other characters a URI may not hold, and a ``%`` that does
    not start an escape; existing ``%XX`` escapes are kept. Non-ASCII host
    names go through IDNA (failure: ``bad_url``). Host names must then be
    letters, digits, ``-`` and ``_`` in labels of at most 63 characters.
    A host whose last label is a number is an IPv4 address spelled the way
    the WHATWG URL standard reads it (``2130706433``, ``0x7f.1``,
    ``0177.0.0.1``, ...): it is converted here, never handed to a resolver,
    and an invalid spelling (``256.0.0.1``, ``1.2.3.4.5``) is ``bad_url``.
    Bracketed hosts must be IPv6 literals without zone id. Credentials
    (any ``@`` in the authority), missing hosts, and ports outside 1..65535
    are ``bad_url``. Only http and https are fetched, and file:// only when
    `FetchPolicy.allow_file` is set (then only absolute local paths).

Addresses (`is_public_address`)
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
    A host is refused (``blocked_url``) when *any* of its addresses is not
    allowed (a mixed answer is a classic DNS-rebinding trick), and the
    connection then goes to the checked address, so a second lookup cannot be
    rebound to 127.0.0.1. `FetchPolicy.allowed_networks` and
    `FetchPolicy.allow_private` open exceptions.

Redirects
    At most `max_redirects` of them (301, 302, 303, 307, 308); each Location
    is decoded as UTF-8 (bytes that are not are percent-encoded), joined to
    the current URL and checked exactly like the original URL, with one
    difference: a redirect to any scheme other than http and https -- file://
    included, whatever the policy -- is ``blocked_url``, since it is a refusal
    of where the server sent us rather than a malformed input. A redirect
    without Location is ``fetch_failed``. No error message ever contains
    bytes read from a local file.

One deadline (`total_timeout_s`)
    covers DNS, connect, TLS handshake, status line, headers and body.
    Resolvers run in a small shared pool of daemon threads and the fetch waits
    for the answer only for the time it has left: a hung lookup costs a pool
    thread until it returns, never a fetch thread (if all pool threads hang,
    later lookups time out). Once connected, the socket is registered with a
    single watchdog thread that calls ``shutdown(SHUT_RDWR)`` on it when the
    deadline passes: that interrupts any blocking recv, however slowly a
    server drips its status line, headers, TLS records or body, and the fetch
    then reports ``timeout``. Socket timeouts bounded by the time left back
    the watchdog up; connecting is also bounded by `connect_timeout_s`.

Bodies
    Only status 200 is accepted. A Content-Length over `max_bytes` is
    ``too_large`` before reading, and the cap also holds while streaming. A
    body shorter than its Content-Length, a chunked body cut short, a
    malformed or repeated Content-Length and a Transfer-Encoding other than
    chunked are ``fetch_failed``.
"""

from __future__ import annotations

import concurrent.futures
import email.errors
import heapq
import http.client
import ipaddress
import itertools
import logging
import os
import queue
import re
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote_to_bytes, urljoin, urlsplit

from services.errors import (
    BadUrlError,
    BlockedUrlError,
    FetchError,
    FetchTimeoutError,
    InputError,
    TooLargeError,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

DEFAULT_MAX_BYTES = 20 * 1000 * 1000
MAX_URL_CHARS = 8192
USER_AGENT = "dmguard/0.1 (+https://github.com/dmguard)"
RESOLVER_THREADS = 8
_REDIRECTS = {301, 302, 303, 307, 308}
_READ_SIZE = 64 * 1024

_log = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------- URLs


@dataclass(frozen=True)
class _Target:
    scheme: str  # "http", "https" or "file"
    host: str  # ASCII: an A-label name, a dotted IPv4 or an IPv6 without brackets
    port: int
    path: str  # http(s): percent-encoded path and query; file: a local path
    url: str  # the normalised URL (ASCII, no fragment)
    literal: IPAddress | None = None  # the host was an address: no resolver involved


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# What RFC 3986 lets stand in a path or query, and "%" when it starts an escape.
_NOT_URI = re.compile(r"%(?![0-9A-Fa-f]{2})|[^A-Za-z0-9\-._~!$&'()*+,;=:@/?\[\]%]")
_AUTHORITY = re.compile(r"(?:\[(?P<ip6>[^\]]*)\]|(?P<name>[^\[\]:]*))(?::(?P<port>.*))?", re.S)
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
_HEX_NUMBER = re.compile(r"0x[0-9a-f]*")


def _shown(url: object, limit: int = 200) -> str:
    """A URL fit for an error message: ASCII, bounded."""
    text = ascii(url) if isinstance(url, str) else f"<{type(url).__name__}>"
    return text if len(text) <= limit else text[:limit] + "...'"


def _clip(url: str, limit: int = 200) -> str:
    """A normalised (ASCII) URL, bounded for an error message."""
    return url if len(url) <= limit else url[:limit] + "..."


def _encode_iri(text: str) -> str:
    """RFC 3987 section 3.1 for a path or query: percent-encode what a URI may not hold."""
    return _NOT_URI.sub(lambda m: quote(m.group(), safe=""), text)


def _ipv4_number(part: str, url: str) -> int:
    if part.startswith("0x"):
        digits, base = part[2:], 16
    elif len(part) > 1 and part.startswith("0"):
        digits, base = part[1:], 8
    else:
        digits, base = part, 10
    if digits == "" and base == 16:
        return 0
    allowed = {16: "0123456789abcdef", 8: "01234567", 10: "0123456789"}[base]
    if not digits or any(c not in allowed for c in digits):
        raise BadUrlError(f"invalid IPv4 address in {_shown(url)}")
    return int(digits, base)


def _ipv4_spelling(host: str, url: str) -> ipaddress.IPv4Address | None:
    """The address a host ending in a number spells (WHATWG URL "IPv4 parser"),
    None for a host name."""
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    last = parts[-1]
    if not (last.isdigit() or _HEX_NUMBER.fullmatch(last)):
        return None
    if len(parts) > 4:
        raise BadUrlError(f"invalid IPv4 address in {_shown(url)}")
    numbers = [_ipv4_number(p, url) for p in parts]
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise BadUrlError(f"invalid IPv4 address in {_shown(url)}")
    value = numbers[-1]
    for i, n in enumerate(numbers[:-1]):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _host(netloc: str, url: str) -> tuple[str, IPAddress | None, str | None]:
    """(ASCII host, address if the host is a literal, port text or None)."""
    if "@" in netloc:
        raise BadUrlError(f"URLs with credentials are not fetched: {_shown(url)}")
    m = _AUTHORITY.fullmatch(netloc)
    if m is None:
        raise BadUrlError(f"malformed host in {_shown(url)}")
    port = m.group("port")
    if m.group("ip6") is not None:
        text = m.group("ip6")
        if "%" in text:
            raise BadUrlError(f"IPv6 zone ids are not fetched: {_shown(url)}")
        try:
            ip6 = ipaddress.IPv6Address(text)
        except ValueError as exc:
            raise BadUrlError(f"invalid IPv6 address in {_shown(url)}") from exc
        return ip6.compressed, ip6, port
    name = m.group("name")
    if not name:
        raise BadUrlError(f"URL has no host: {_shown(url)}")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise BadUrlError(f"host is not a valid IDN: {_shown(url)}") from exc
    name = name.lower()
    labels = name[:-1].split(".") if name.endswith(".") and len(name) > 1 else name.split(".")
    if len(name) > 254 or not all(_LABEL.fullmatch(label) for label in labels):
        raise BadUrlError(f"invalid host name in {_shown(url)}")
    ip4 = _ipv4_spelling(name, url)
    if ip4 is not None:
        return str(ip4), ip4, port
    return name, None, port


def _check_text(url: object, what: str) -> str:
    """Refuse what no URL may be: non-text, too long, control characters, lone surrogates
    (before urlsplit, which silently drops TAB, CR and LF)."""
    if not isinstance(url, str):
        raise BadUrlError(f"a URL must be a string, not {type(url).__name__}")
    if len(url) > MAX_URL_CHARS:
        raise BadUrlError(f"{what} longer than {MAX_URL_CHARS} characters")
    if _CONTROL.search(url):
        raise BadUrlError(f"control character in {what} {_shown(url)}")
    try:
        url.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadUrlError(f"{what} {_shown(url)} is not valid Unicode") from exc
    return url


def _parse(url: object, policy: FetchPolicy, *, redirect: bool = False) -> _Target:
    what = "redirect to" if redirect else "URL"
    url = _check_text(url, what)
    try:
        parts = urlsplit(url.strip(" "))
    except ValueError as exc:
        raise BadUrlError(f"malformed {what} {_shown(url)}: {exc}") from exc
    scheme = parts.scheme.lower()
    if redirect and scheme not in ("http", "https"):
        raise BlockedUrlError(f"redirect to a {scheme or 'scheme-less'} URL refused: {_shown(url)}")
    if scheme == "file":
        if not policy.allow_file:
            raise BadUrlError("file:// URLs are not allowed (serve with --allow-file-urls)")
        if parts.netloc not in ("", "localhost"):
            raise BadUrlError(f"file:// URL on another host: {_shown(url)}")
        raw = unquote_to_bytes(parts.path)
        if not raw.startswith(b"/") or b"\x00" in raw:
            raise BadUrlError(f"file:// URL without an absolute path: {_shown(url)}")
        return _Target("file", "", 0, os.fsdecode(raw), url)
    if scheme not in ("http", "https"):
        raise BadUrlError(f"unsupported URL scheme in {_shown(url)}: only http and https")
    host, literal, port_text = _host(parts.netloc, url)
    if port_text in (None, ""):
        port = 443 if scheme == "https" else 80
    elif re.fullmatch(r"[0-9]{1,5}", port_text) and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        raise BadUrlError(f"invalid port in {_shown(url)}")
    path = _encode_iri(parts.path) or "/"
    if not path.startswith("/"):
        path = "/" + path
    if parts.query:
        path += "?" + _encode_iri(parts.query)
    authority = f"[{host}]" if ":" in host else host
    if port_text:
        authority += f":{port}"
    normal = f"{scheme}://{authority}{path}"
    if len(normal) > MAX_URL_CHARS:
        raise BadUrlError(f"{what} longer than {MAX_URL_CHARS} characters once encoded")
    return _Target(scheme, host, port, path, normal, literal)


def parse_url(url: str, policy: FetchPolicy) -> tuple[str, str, int, str]:
    """Check and normalise a URL: (scheme, ASCII host, port, encoded path-with-query).

    For file:// URLs host is "" and port 0, and the path is a local path.

    Raises:
        BadUrlError: see the module docstring.
    """
    t = _parse(url, policy)
    return t.scheme, t.host, t.port, t.path


def _location_text(location: str) -> str:
    """A Location header as text: http.client decodes header bytes as Latin-1,
    servers send UTF-8; bytes that are not UTF-8 are percent-encoded."""
    raw = location.strip().encode("latin-1", "replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(chr(b) if b < 0x80 else f"%{b:02X}" for b in raw)


# --------------------------------------------------------------------------- deadline


def _shutdown(sock: socket.socket) -> None:
    try:
        # The base class's method: ssl.SSLSocket.shutdown would also drop its
        # SSL object under the feet of the reading thread.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class _Deadline:
    """The one deadline of a fetch, and the socket the watchdog shuts down when it passes."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._fired = False
        self.done = False
        self._watched = False

    def remaining(self) -> float:
        return self.at - time.monotonic()

    @property
    def expired(self) -> bool:
        return self._fired or time.monotonic() >= self.at

    def io_timeout(self) -> float:
        """A socket timeout for the next operation: the time left, never 0 (non-blocking)."""
        return max(0.01, self.remaining())

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            fired = self._fired
        if not self._watched:
            self._watched = True
            _WATCHDOG.watch(self)
        if fired or self.expired:
            self.fire()

    def detach(self) -> None:
        """Called before the socket is closed: the watchdog never touches a closed
        socket (whose descriptor may already belong to someone else)."""
        with self._lock:
            self._sock = None

    def fire(self) -> None:
        with self._lock:
            if self.done:
                return
            self._fired = True
            if self._sock is not None:
                _shutdown(self._sock)

    def finish(self) -> None:
        with self._lock:
            self.done = True
            self._sock = None


class _Watchdog:
    """One daemon thread firing the deadlines of all fetches of the process."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._seq = itertools.count()
        self._pid = 0

    def watch(self, deadline: _Deadline) -> None:
        with self._cond:
            if self._pid != os.getpid():  # first use, or a forked child: no thread yet
                self._pid = os.getpid()
                self._heap = []
                threading.Thread(target=self._run, name="fetch-watchdog", daemon=True).start()
            heapq.heappush(self._heap, (deadline.at, next(self._seq), deadline))
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][0] <= now or self._heap[0][2].done):
                    _, _, deadline = heapq.heappop(self._heap)
                    deadline.fire()
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


class _ResolverPool:
    """A few daemon threads running resolvers, so that a fetch can stop waiting."""

    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pid = 0

    def submit(self, fn: Callable, *args) -> concurrent.futures.Future:
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._queue = queue.SimpleQueue()
                for i in range(self._threads):
                    threading.Thread(
                        target=self._work, args=(self._queue,), name=f"resolver-{i}", daemon=True
                    ).start()
            future: concurrent.futures.Future = concurrent.futures.Future()
            self._queue.put((fn, args, future))
        return future

    @staticmethod
    def _work(jobs: queue.SimpleQueue) -> None:
        while True:
            fn, args, future = jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the waiting fetch
                future.set_exception(exc)


_WATCHDOG = _Watchdog()
_RESOLVERS = _ResolverPool(RESOLVER_THREADS)


# --------------------------------------------------------------------------- resolving


def system_resolver(host: str, port: int) -> list[str]:
    """All addresses `host` resolves to."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as exc:
        raise FetchError(f"cannot resolve host {host!r}: {exc}") from exc
    return list(dict.fromkeys(info[4][0] for info in infos))


def _resolve(host: str, port: int, resolver: Resolver, timeout: float) -> list[str]:
    if timeout <= 0:
        raise FetchTimeoutError(f"no time left to resolve {host!r}")
    future = _RESOLVERS.submit(resolver, host, port)
    try:
        answer = future.result(timeout=timeout)
    except concurrent.futures.TimeoutError as exc:
        future.cancel()
        raise FetchTimeoutError(f"resolving {host!r} took longer than {timeout:.1f} s") from exc
    except InputError:
        raise
    except Exception as exc:
        raise FetchError(f"cannot resolve host {host!r}: {type(exc).__name__}") from exc
    if isinstance(answer, (str, bytes)) or not isinstance(answer, (list, tuple)):
        raise FetchError(f"resolver gave {type(answer).__name__} for {host!r}, not a list")
    if not all(isinstance(a, str) for a in answer):
        raise FetchError(f"resolver gave a non-string address for {host!r}")
    return list(answer)


def check_host(
    host: str, port: int, policy: FetchPolicy, resolver: Resolver, *, timeout: float | None = None
) -> str:
    """Resolve `host` and return an address to connect to, refusing the whole
    host if any of its addresses is not allowed (a mixed answer is a classic
    rebinding trick). The resolver runs in a shared pool; it gets `timeout`
    seconds (default: the policy's total timeout).

    Raises:
        BlockedUrlError: an address is private, loopback, link-local, ...
        FetchError: the host does not resolve, or the resolver gave garbage.
        FetchTimeoutError: the resolver did not answer in time.
    """
    limit = policy.total_timeout_s if timeout is None else timeout
    addresses = _resolve(host, port, resolver, limit)
    if not addresses:
        raise FetchError(f"host {host!r} has no addresses")
    for text in addresses:
        try:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError as exc:
            raise FetchError(f"resolver gave {_shown(text)} for {host!r}, not an address") from exc
        if not policy.address_allowed(ip):
            raise BlockedUrlError(f"host {host!r} resolves to non-public address {ip}")
    return addresses[0]


def _address_for(target: _Target, policy: FetchPolicy, resolver: Resolver, deadline: _Deadline):
    if target.literal is not None:
        where = _clip(target.url)
        if not policy.address_allowed(target.literal):
            raise BlockedUrlError(f"{where}: non-public address {target.literal}")
        return str(target.literal)
    return check_host(target.host, target.port, policy, resolver, timeout=deadline.remaining())


# --------------------------------------------------------------------------- HTTP

_create_connection = socket.create_connection  # tests replace it to forbid real connections
_tls: ssl.SSLContext | None = None


def _tls_context() -> ssl.SSLContext:
    global _tls
    if _tls is None:
        _tls = ssl.create_default_context()
    return _tls


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to an address checked in advance, whatever `host` resolves to now,
    and hands its socket to the fetch's deadline."""

    def __init__(self, host: str, port: int, address: str, deadline: _Deadline, connect_s: float):
        super().__init__(host, port, timeout=connect_s)
        self._address = address
        self._deadline = deadline
        self.live_socket: socket.socket | None = None

    def connect(self) -> None:
        sock = _create_connection((self._address, self.port), self.timeout)
        self.sock = self.live_socket = sock
        self._deadline.attach(sock)
        sock.settimeout(self._deadline.io_timeout())
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    default_port = 443

    def connect(self) -> None:
        super().connect()
        tls = _tls_context().wrap_socket(
            self.sock, server_hostname=self.host, do_handshake_on_connect=False
        )
        # kept: http.client drops .sock when the response owns it
        self.sock = self.live_socket = tls
        self._deadline.attach(tls)  # the plain socket was detached by wrap_socket
        tls.settimeout(self._deadline.io_timeout())
        tls.do_handshake()


@dataclass(frozen=True)
class _Redirect:
    location: str


def _content_length(resp: http.client.HTTPResponse, url: str) -> int | None:
    encodings = resp.msg.get_all("Transfer-Encoding") or []
    if resp.chunked:
        if [e.strip().lower() for e in encodings] != ["chunked"]:
            raise FetchError(f"{url}: unsupported Transfer-Encoding")
        return None  # http.client ignores Content-Length on a chunked body
    if encodings:
        raise FetchError(f"{url}: unsupported Transfer-Encoding")
    lengths = resp.msg.get_all("Content-Length") or []
    if not lengths:
        return None
    if len(lengths) > 1 or not re.fullmatch(r"[0-9]{1,18}", lengths[0].strip()):
        raise FetchError(f"{url}: malformed Content-Length")
    length = int(lengths[0].strip())
    if resp.length != length:  # what http.client will read must be what we check
        raise FetchError(f"{url}: malformed Content-Length")
    return length


def _read_body(
    resp: http.client.HTTPResponse,
    sock: socket.socket,
    max_bytes: int,
    deadline: _Deadline,
    url: str,
) -> bytes:
    buf = bytearray()
    while True:
        if deadline.expired:
            raise FetchTimeoutError(f"{url} took longer than the total timeout")
        sock.settimeout(deadline.io_timeout())  # no read outlives the deadline
        chunk = resp.read1(_READ_SIZE)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > max_bytes:
            raise TooLargeError(f"{url} is larger than {max_bytes} bytes")


def _exchange(target: _Target, address: str, policy: FetchPolicy, deadline: _Deadline):
    """One GET: the body, or a _Redirect."""
    where = _clip(target.url)
    remaining = deadline.remaining()
    if remaining <= 0:
        raise FetchTimeoutError(f"{where}: total timeout before connecting")
    cls = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    conn = cls(
        target.host, target.port, address, deadline, min(policy.connect_timeout_s, remaining)
    )
    resp = None
    try:
        conn.request("GET", target.path, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
        resp = conn.getresponse()
        if resp.status in _REDIRECTS:
            locations = {v.strip() for v in resp.msg.get_all("Location") or []} - {""}
            if not locations:
                raise FetchError(f"{where}: HTTP {resp.status} without Location")
            if len(locations) > 1:
                raise FetchError(f"{where}: HTTP {resp.status} with several Locations")
            return _Redirect(locations.pop())
        if resp.status != 200:
            raise FetchError(f"{where}: HTTP {resp.status} {_shown(resp.reason, 60)}")
        length = _content_length(resp, where)
        if length is not None and length > policy.max_bytes:
            raise TooLargeError(f"{where}: Content-Length {length} > {policy.max_bytes} bytes")
        body = _read_body(resp, conn.live_socket, policy.max_bytes, deadline, where)
        if deadline.expired:  # the watchdog's shutdown reads as an early end of file
            raise FetchTimeoutError(f"{where} took longer than the total timeout")
        if length is not None and len(body) != length:
            raise FetchError(f"{where}: body of {len(body)} bytes, Content-Length {length}")
        return body
    except (FetchTimeoutError, TooLargeError):
        raise
    except Exception as exc:
        if deadline.expired:
            raise FetchTimeoutError(f"{where}: timed out ({type(exc).__name__})") from exc
        if isinstance(exc, InputError):
            raise
        if isinstance(exc, socket.timeout):
            raise FetchTimeoutError(f"{where}: timed out ({exc})") from exc
        if isinstance(
            exc, (OSError, http.client.HTTPException, ValueError, email.errors.MessageError)
        ):
            detail = _shown(str(exc), 120)
            raise FetchError(f"{where}: {type(exc).__name__}: {detail}") from exc
        raise
    finally:
        deadline.detach()
        if resp is not None:
            resp.close()
        conn.close()


# --------------------------------------------------------------------------- fetching


class _UnexpectedFetchError(FetchError):
    """A fetch failed in a way this module did not foresee (a bug): still
    fetch_failed for the pipeline, logged with its traceback."""


def fetch_bytes(url: str, policy: FetchPolicy, *, resolver: Resolver = system_resolver) -> bytes:
    """Fetch the body at `url` under `policy` (see the module docstring).

    Raises:
        InputError subclasses with the dead-letter codes bad_url, blocked_url,
        fetch_failed, timeout and too_large; nothing else.
    """
    deadline = _Deadline(policy.total_timeout_s)
    try:
        return _fetch(url, policy, resolver, deadline)
    except InputError:
        raise
    except Exception as exc:
        _log.warning("unexpected error fetching %s", _shown(url), exc_info=True)
        raise _UnexpectedFetchError(
            f"{_shown(url)}: unexpected {type(exc).__name__} while fetching"
        ) from exc
    finally:
        deadline.finish()


def _fetch(url: str, policy: FetchPolicy, resolver: Resolver, deadline: _Deadline) -> bytes:
    target = _parse(url, policy)
    if target.scheme == "file":
        return _read_file(target.path, policy)
    redirects = 0
    while True:
        address = _address_for(target, policy, resolver, deadline)
        result = _exchange(target, address, policy, deadline)
        if isinstance(result, bytes):
            return result
        if redirects >= policy.max_redirects:
            raise FetchError(f"{_shown(url)}: more than {policy.max_redirects} redirects")
        redirects += 1
        location = _check_text(_location_text(result.location), "redirect to")
        try:
            joined = urljoin(target.url, location)
        except ValueError as exc:
            where = _clip(target.url)
            raise BadUrlError(f"{where}: malformed redirect to {_shown(location)}") from exc
        target = _parse(joined, policy, redirect=True)


def _read_file(path: str, policy: FetchPolicy) -> bytes:
    """A regular local file, at most policy.max_bytes of it. Error messages name
    the path, never what the file holds."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise FetchError(f"cannot read {_shown(path)}: {exc.strerror}") from exc
    except ValueError as exc:
        raise BadUrlError(f"invalid file path {_shown(path)}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FetchError(f"{_shown(path)} is not a regular file")
        if info.st_size > policy.max_bytes:
            raise TooLargeError(
                f"{_shown(path)} is {info.st_size} bytes, more than {policy.max_bytes}"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(policy.max_bytes + 1)
    except OSError as exc:
        raise FetchError(f"cannot read {_shown(path)}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(data) > policy.max_bytes:
        raise TooLargeError(f"{_shown(path)} is larger than {policy.max_bytes} bytes")
    return data
