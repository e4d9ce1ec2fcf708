"""Turning a URL string from a stranger into a checked `Target`.

Every character of a URL is treated as hostile; what cannot be fetched
raises ``BadUrlError`` (``bad_url``), or ``BlockedUrlError`` for a redirect
to a scheme other than http(s). Whether the host's addresses may be
contacted is decided later, by `services.fetch` and `services.addresses`.

URLs (`parse_url`, `parse`)
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

Redirects (`redirect_target`)
    Each Location is decoded as UTF-8 (bytes that are not are
    percent-encoded), joined to the current URL and checked exactly like the
    original URL, with one difference: a redirect to any scheme other than
    http and https -- file:// included, whatever the policy -- is
    ``blocked_url``, since it is a refusal of where the server sent us rather
    than a malformed input.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote_to_bytes, urljoin, urlsplit

from services.addresses import IPAddress
from services.errors import BadUrlError, BlockedUrlError

if TYPE_CHECKING:
    from services.fetch import FetchPolicy

MAX_URL_CHARS = 8192


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect and what to ask for (the interface to services.fetch)."""

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


def shown(url: object, limit: int = 200) -> str:
    """Any text (a URL, a path, a reason) fit for an error message: ASCII, bounded."""
    text = ascii(url) if isinstance(url, str) else f"<{type(url).__name__}>"
    return text if len(text) <= limit else text[:limit] + "...'"


def clip(url: str, limit: int = 200) -> str:
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
        raise BadUrlError(f"invalid IPv4 address in {shown(url)}")
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
        raise BadUrlError(f"invalid IPv4 address in {shown(url)}")
    numbers = [_ipv4_number(p, url) for p in parts]
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise BadUrlError(f"invalid IPv4 address in {shown(url)}")
    value = numbers[-1]
    for i, n in enumerate(numbers[:-1]):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _host(netloc: str, url: str) -> tuple[str, IPAddress | None, str | None]:
    """(ASCII host, address if the host is a literal, port text or None)."""
    if "@" in netloc:
        raise BadUrlError(f"URLs with credentials are not fetched: {shown(url)}")
    m = _AUTHORITY.fullmatch(netloc)
    if m is None:
        raise BadUrlError(f"malformed host in {shown(url)}")
    port = m.group("port")
    if m.group("ip6") is not None:
        text = m.group("ip6")
        if "%" in text:
            raise BadUrlError(f"IPv6 zone ids are not fetched: {shown(url)}")
        try:
            ip6 = ipaddress.IPv6Address(text)
        except ValueError as exc:
            raise BadUrlError(f"invalid IPv6 address in {shown(url)}") from exc
        return ip6.compressed, ip6, port
    name = m.group("name")
    if not name:
        raise BadUrlError(f"URL has no host: {shown(url)}")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise BadUrlError(f"host is not a valid IDN: {shown(url)}") from exc
    name = name.lower()
    labels = name[:-1].split(".") if name.endswith(".") and len(name) > 1 else name.split(".")
    if len(name) > 254 or not all(_LABEL.fullmatch(label) for label in labels):
        raise BadUrlError(f"invalid host name in {shown(url)}")
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
        raise BadUrlError(f"control character in {what} {shown(url)}")
    try:
        url.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadUrlError(f"{what} {shown(url)} is not valid Unicode") from exc
    return url


def parse(url: object, policy: FetchPolicy, *, redirect: bool = False) -> Target:
    """Check and normalise a URL, or the joined Location of a redirect, into a `Target`."""
    what = "redirect to" if redirect else "URL"
    url = _check_text(url, what)
    try:
        parts = urlsplit(url.strip(" "))
    except ValueError as exc:
        raise BadUrlError(f"malformed {what} {shown(url)}: {exc}") from exc
    scheme = parts.scheme.lower()
    if redirect and scheme not in ("http", "https"):
        raise BlockedUrlError(f"redirect to a {scheme or 'scheme-less'} URL refused: {shown(url)}")
    if scheme == "file":
        if not policy.allow_file:
            raise BadUrlError("file:// URLs are not allowed (serve with --allow-file-urls)")
        if parts.netloc not in ("", "localhost"):
            raise BadUrlError(f"file:// URL on another host: {shown(url)}")
        raw = unquote_to_bytes(parts.path)
        if not raw.startswith(b"/") or b"\x00" in raw:
            raise BadUrlError(f"file:// URL without an absolute path: {shown(url)}")
        return Target("file", "", 0, os.fsdecode(raw), url)
    if scheme not in ("http", "https"):
        raise BadUrlError(f"unsupported URL scheme in {shown(url)}: only http and https")
    host, literal, port_text = _host(parts.netloc, url)
    if port_text in (None, ""):
        port = 443 if scheme == "https" else 80
    elif re.fullmatch(r"[0-9]{1,5}", port_text) and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        raise BadUrlError(f"invalid port in {shown(url)}")
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
    return Target(scheme, host, port, path, normal, literal)


def parse_url(url: str, policy: FetchPolicy) -> tuple[str, str, int, str]:
    """Check and normalise a URL: (scheme, ASCII host, port, encoded path-with-query).

    For file:// URLs host is "" and port 0, and the path is a local path.

    Raises:
        BadUrlError: see the module docstring.
    """
    t = parse(url, policy)
    return t.scheme, t.host, t.port, t.path


def _location_text(location: str) -> str:
    """A Location header as text: http.client decodes header bytes as Latin-1,
    servers send UTF-8; bytes that are not UTF-8 are percent-encoded."""
    raw = location.strip().encode("latin-1", "replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(chr(b) if b < 0x80 else f"%{b:02X}" for b in raw)


def redirect_target(current: Target, location: str, policy: FetchPolicy) -> Target:
    """Where a redirect from `current` to the Location header `location` leads, checked."""
    location = _check_text(_location_text(location), "redirect to")
    try:
        joined = urljoin(current.url, location)
    except ValueError as exc:
        where = clip(current.url)
        raise BadUrlError(f"{where}: malformed redirect to {shown(location)}") from exc
    return parse(joined, policy, redirect=True)
