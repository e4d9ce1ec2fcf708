"""Guarded fetching of image bytes from URLs given by strangers.

Every byte of a URL and every byte a server sends is treated as hostile.
`fetch_bytes` either returns the body or raises an `InputError` subclass whose
`code` is one of the dead-letter codes ``bad_url``, ``blocked_url``,
``fetch_failed``, ``timeout`` or ``too_large`` -- nothing else escapes.
The work is shared between four modules:

* `services.urls`: the URL, and every redirect's Location, is parsed and
  normalised into a checked target (``bad_url``);
* `services.addresses`: which IP addresses may be contacted at all;
* `services.deadline`: one total deadline per fetch (``timeout``);
* this module: the policy, resolving and checking hosts, the pinned
  HTTP(S) connections, reading bodies, and file:// URLs.

Hosts (`check_host`)
    A host is refused (``blocked_url``) when *any* of its addresses is not
    allowed (a mixed answer is a classic DNS-rebinding trick), and the
    connection then goes to the checked address, so a second lookup cannot be
    rebound to 127.0.0.1. `FetchPolicy.allowed_networks` and
    `FetchPolicy.allow_private` open exceptions to `is_public_address`.

Redirects
    At most `max_redirects` of them (301, 302, 303, 307, 308), each checked
    exactly like the original URL (see `services.urls`). A redirect without
    Location is ``fetch_failed``. No error message ever contains bytes read
    from a local file.

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
import http.client
import ipaddress
import logging
import os
import re
import socket
import ssl
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from services.addresses import IPAddress, is_public_address
from services.deadline import RESOLVERS, Deadline
from services.errors import (
    BadUrlError,
    BlockedUrlError,
    FetchError,
    FetchTimeoutError,
    InputError,
    TooLargeError,
)
from services.urls import Target, clip, parse, redirect_target, shown

Resolver = Callable[[str, int], list[str]]

DEFAULT_MAX_BYTES = 20 * 1000 * 1000
USER_AGENT = "dmguard/0.1 (+https://github.com/dmguard)"
_REDIRECTS = {301, 302, 303, 307, 308}
_READ_SIZE = 64 * 1024

_log = logging.getLogger(__name__)


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
    future = RESOLVERS.submit(resolver, host, port)
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
            raise FetchError(f"resolver gave {shown(text)} for {host!r}, not an address") from exc
        if not policy.address_allowed(ip):
            raise BlockedUrlError(f"host {host!r} resolves to non-public address {ip}")
    return addresses[0]


def _address_for(target: Target, policy: FetchPolicy, resolver: Resolver, deadline: Deadline):
    if target.literal is not None:
        where = clip(target.url)
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

    def __init__(self, host: str, port: int, address: str, deadline: Deadline, connect_s: float):
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
    deadline: Deadline,
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


def _exchange(target: Target, address: str, policy: FetchPolicy, deadline: Deadline):
    """One GET: the body, or a _Redirect."""
    where = clip(target.url)
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
            raise FetchError(f"{where}: HTTP {resp.status} {shown(resp.reason, 60)}")
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
            detail = shown(str(exc), 120)
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
    deadline = Deadline(policy.total_timeout_s)
    try:
        return _fetch(url, policy, resolver, deadline)
    except InputError:
        raise
    except Exception as exc:
        _log.warning("unexpected error fetching %s", shown(url), exc_info=True)
        raise _UnexpectedFetchError(
            f"{shown(url)}: unexpected {type(exc).__name__} while fetching"
        ) from exc
    finally:
        deadline.finish()


def _fetch(url: str, policy: FetchPolicy, resolver: Resolver, deadline: Deadline) -> bytes:
    target = parse(url, policy)
    if target.scheme == "file":
        return _read_file(target.path, policy)
    redirects = 0
    while True:
        address = _address_for(target, policy, resolver, deadline)
        result = _exchange(target, address, policy, deadline)
        if isinstance(result, bytes):
            return result
        if redirects >= policy.max_redirects:
            raise FetchError(f"{shown(url)}: more than {policy.max_redirects} redirects")
        redirects += 1
        target = redirect_target(target, result.location, policy)


def _read_file(path: str, policy: FetchPolicy) -> bytes:
    """A regular local file, at most policy.max_bytes of it. Error messages name
    the path, never what the file holds."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise FetchError(f"cannot read {shown(path)}: {exc.strerror}") from exc
    except ValueError as exc:
        raise BadUrlError(f"invalid file path {shown(path)}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FetchError(f"{shown(path)} is not a regular file")
        if info.st_size > policy.max_bytes:
            raise TooLargeError(
                f"{shown(path)} is {info.st_size} bytes, more than {policy.max_bytes}"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(policy.max_bytes + 1)
    except OSError as exc:
        raise FetchError(f"cannot read {shown(path)}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(data) > policy.max_bytes:
        raise TooLargeError(f"{shown(path)} is larger than {policy.max_bytes} bytes")
    return data
