"""Pools at ``http(s)://`` URLs, streamed to a temporary file.

Non-public addresses (loopback, private, link-local where cloud metadata answers...) are
refused unless allowed, every redirect is checked anew, each connection goes to the address
that was checked (DNS cannot answer differently between check and use), credentials go only
to the URL's own origin, and the download runs within a deadline and a minimum rate: see
``DownloadLimits``. URLs appear in messages only as ``redact_url`` shows them.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import os
import posixpath
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from testprio.errors import TestprioError
from testprio.ingest.byte_budget import COPY_BLOCK_BYTES, ByteBudget, too_large
from testprio.ingest.messages import redact_url, short


@dataclass(frozen=True)
class DownloadLimits:
    """Where an http(s) download may connect and how long it may take.

    ``allow_private``: connect to non-public addresses too: loopback, private (RFC 1918,
    IPv6 unique-local ``fc00::/7``), shared (carrier-grade NAT ``100.64.0.0/10``),
    link-local (``169.254.0.0/16`` and ``fe80::/10``, where cloud metadata servers answer)
    and reserved ones. Off by default: a pipeline in a cluster would otherwise fetch
    internal services for whoever can pass it a URL. ``allowed_networks``: CIDR blocks
    reachable even so (``("10.1.2.0/24",)`` for one internal data server).

    ``deadline_s``: the whole download, redirects and headers included. ``min_bytes_per_s``
    (0: none): the body must arrive at least this fast, averaged over every
    ``rate_window_s`` seconds, so a server trickling bytes cannot hold a run for days.
    ``idle_timeout_s``: no byte at all for this long. ``max_redirects``: redirects followed.
    """

    allow_private: bool = False
    allowed_networks: tuple[str, ...] = ()
    deadline_s: float = 4 * 3600.0
    min_bytes_per_s: float = 16 * 1024
    rate_window_s: float = 60.0
    idle_timeout_s: float = 60.0
    max_redirects: int = 5


DEFAULT_DOWNLOAD_LIMITS = DownloadLimits()


def _url_basename(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    name = posixpath.basename(urllib.parse.unquote(parts.path))
    if not name or name in (".", "..") or "\x00" in name:
        return parts.hostname or "download"
    return name[-200:]


_REDIRECTS = (301, 302, 303, 307, 308)
# Names that mean "this machine" or a cloud metadata server whatever DNS says.
_INTERNAL_NAMES = frozenset(
    {"localhost", "localhost.localdomain", "metadata", "metadata.google.internal", "metadata.goog"}
)
_INTERNAL_SUFFIXES = (".localhost", ".internal")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# The first kind that applies names a refused address in the error sentence.
_ADDRESS_KINDS: tuple[tuple[str, Callable[[ipaddress._BaseAddress], bool]], ...] = (
    ("unspecified", lambda a: a.is_unspecified),
    ("loopback", lambda a: a.is_loopback),
    ("link-local (cloud metadata)", lambda a: a.is_link_local),
    ("multicast", lambda a: a.is_multicast),
    ("private", lambda a: a.is_private),
    ("non-public", lambda a: not a.is_global),  # 100.64.0.0/10, reserved blocks
)
_PRIVATE_HINT = (
    "testprio does not download from non-public addresses by default, as they reach "
    "internal services; pass --allow-private-urls if this server is meant to be used"
)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, Teredo, NAT64, the old
    IPv4-compatible form): ``::ffff:127.0.0.1`` reaches 127.0.0.1."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _address_kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``address`` is refused (``loopback``, ``private``...), or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None and _address_kind(inner) is not None:
            return _address_kind(inner)
    return next((kind for kind, test in _ADDRESS_KINDS if test(address)), None)


def _allowed_networks(
    limits: DownloadLimits,
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for text in limits.allowed_networks:
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise TestprioError(
                f"allowed network '{text}' is not a CIDR block; write it like 10.1.2.0/24."
            ) from None
    return networks


def _checked_addresses(host: str, port: int, limits: DownloadLimits, shown: str) -> list[str]:
    """Every address ``host`` resolves to, each checked; the download connects only to these
    (never resolving again, so DNS cannot answer differently between check and use)."""
    name = host.rstrip(".").lower()
    if not limits.allow_private and (name in _INTERNAL_NAMES or name.endswith(_INTERNAL_SUFFIXES)):
        raise TestprioError(f"{shown} names the internal host '{name}'; {_PRIVATE_HINT}.")
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise TestprioError(
            f"cannot download {shown} (its host '{host}' cannot be resolved: {short(exc)}); "
            "check the URL and the network."
        ) from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    if limits.allow_private:
        return addresses
    allowed = _allowed_networks(limits)
    for text in addresses:
        address = ipaddress.ip_address(text)
        if any(address.version == net.version and address in net for net in allowed):
            continue
        kind = _address_kind(address)
        if kind is not None:
            article = "an" if kind[0] in "aeiou" else "a"
            raise TestprioError(
                f"{shown} resolves to {text}, {article} {kind} address; {_PRIVATE_HINT}."
            )
    return addresses


class _Deadline:
    """The whole download's time limit. When it passes, the open connection is shut down,
    which ends a read however slowly the server trickles bytes (a socket timeout only
    bounds the wait for each byte)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._end = time.monotonic() + seconds
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._timer.cancel()

    def remaining(self) -> float:
        return max(self._end - time.monotonic(), 0.001)

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.expired:
                self._shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._sock is not None:
                self._shut(self._sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        # socket.socket's own shutdown: SSLSocket's would drop its TLS state under a reader
        # in another thread. A closed socket has no descriptor left, so nothing else is hit.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to ``address``, checked beforehand, while Host names the URL's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float, deadline: _Deadline):
        super().__init__(host, port, timeout=timeout)
        self.address = address
        self.deadline = deadline

    def _connect_socket(self) -> socket.socket:
        return socket.create_connection(
            (self.address, self.port), min(self.timeout, self.deadline.remaining())
        )

    def connect(self) -> None:
        self.sock = self._connect_socket()
        self.sock.settimeout(self.timeout)
        self.deadline.watch(self.sock)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    default_port = http.client.HTTPS_PORT

    def connect(self) -> None:
        raw = self._connect_socket()
        raw.settimeout(self.timeout)
        context = ssl.create_default_context()
        # SNI and certificate check use the URL's host name, not the address connected to.
        self.sock = context.wrap_socket(
            raw, server_hostname=self.host, do_handshake_on_connect=False
        )
        self.deadline.watch(self.sock)  # a handshake trickled byte by byte ends there too
        self.sock.do_handshake()


_CONNECTIONS = {"http": _PinnedHTTPConnection, "https": _PinnedHTTPSConnection}


def _split_http_url(url: str, shown: str) -> tuple[str, str, int, str]:
    """Scheme, host, port and the request target (path and query) of ``url``; the user
    name and password are left out (they go in an Authorization header, if anywhere)."""
    try:
        parts = urllib.parse.urlsplit(url)
        scheme, host = parts.scheme.lower(), parts.hostname
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise TestprioError(f"{shown} is not a valid URL ({short(exc)}); correct it.") from None
    if scheme not in _CONNECTIONS or not host:
        raise TestprioError(f"{shown} is not an http(s) URL with a host; correct it.")
    target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    return scheme, host, port, target


def _basic_auth(url: str) -> str | None:
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return None
    pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def _open_http(
    url: str, limits: DownloadLimits, deadline: _Deadline, shown: str
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """The connection and response of the first non-redirect answer to GET ``url``.

    Every hop is resolved and checked anew and connected to by a checked address.
    Credentials from the URL go only to the URL's own scheme, host and port.
    """
    origin = _split_http_url(url, shown)[:3]
    authorization = _basic_auth(url)
    current, what = url, shown
    for _hop in range(limits.max_redirects + 1):
        scheme, host, port, target = _split_http_url(current, what)
        headers = {"User-Agent": "testprio", "Accept-Encoding": "identity"}
        if authorization and (scheme, host, port) == origin:
            headers["Authorization"] = authorization
        connection, response = _request(scheme, host, port, target, headers, limits, deadline, what)
        if response.status not in _REDIRECTS:
            return connection, response
        location = response.getheader("Location", "")
        response.close()
        connection.close()
        following = urllib.parse.urljoin(current, location.strip())
        next_scheme = following.split("://", 1)[0].lower() if "://" in following else ""
        if not location or next_scheme not in _CONNECTIONS:
            raise TestprioError(
                f"{shown} redirects to {redact_url(following) or 'nowhere'}, which is not an "
                "http(s) URL; give the final URL of the file."
            )
        if scheme == "https" and next_scheme == "http":
            raise TestprioError(
                f"{shown} redirects from https to plain http ({redact_url(following)}); give "
                "an https URL that does not leave https."
            )
        current, what = following, f"{shown} (redirected to {redact_url(following)})"
    raise TestprioError(
        f"{shown} redirects more than {limits.max_redirects} times; give the final URL of the file."
    )


def _request(
    scheme: str,
    host: str,
    port: int,
    target: str,
    headers: dict[str, str],
    limits: DownloadLimits,
    deadline: _Deadline,
    shown: str,
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """GET ``target`` from the first checked address of ``host`` that accepts a connection."""
    addresses = _checked_addresses(host, port, limits, shown)
    reason: BaseException = OSError("no address")
    for address in addresses:
        connection = _CONNECTIONS[scheme](host, port, address, limits.idle_timeout_s, deadline)
        try:
            connection.connect()
        except OSError as exc:
            connection.close()
            reason = exc
            if deadline.expired:
                break
            continue
        connection.request("GET", target, headers=headers)
        return connection, connection.getresponse()
    if deadline.expired:
        raise _past_deadline(shown, limits)
    raise TestprioError(
        f"cannot download {shown} ({short(reason)}); check the URL and that its server can be "
        "reached from here."
    )


def _past_deadline(shown: str, limits: DownloadLimits) -> TestprioError:
    return TestprioError(
        f"downloading {shown} took longer than the limit of {limits.deadline_s:g} s; use a "
        "faster server or a smaller pool, or raise --download-timeout-s."
    )


def _read_body(
    response: http.client.HTTPResponse,
    path: str,
    budget: ByteBudget,
    limits: DownloadLimits,
    shown: str,
) -> int:
    """Copy the body to ``path``; stop when it arrives slower than ``min_bytes_per_s``."""
    received = 0
    window_start, window_bytes = time.monotonic(), 0
    with open(path, "wb") as target:
        # read1 returns what one receive brings, so the rate is checked even when the
        # server sends a byte at a time (read(n) would wait for all n bytes).
        while block := response.read1(COPY_BLOCK_BYTES):
            budget.take(len(block))
            target.write(block)
            received += len(block)
            window_bytes += len(block)
            elapsed = time.monotonic() - window_start
            if elapsed >= limits.rate_window_s:
                if window_bytes < limits.min_bytes_per_s * elapsed:
                    raise TestprioError(
                        f"downloading {shown} is too slow ({window_bytes / elapsed:,.0f} "
                        f"bytes/s over {elapsed:.0f} s, the minimum is "
                        f"{limits.min_bytes_per_s:,.0f}); retry later, use a faster server, "
                        "or lower --download-min-bytes-per-s."
                    )
                window_start, window_bytes = time.monotonic(), 0
    return received


def fetch_http(
    url: str, scratch: Callable[[], str], limit: int, limits: DownloadLimits
) -> tuple[str, str]:
    shown = redact_url(url)
    name = _url_basename(url)
    path = os.path.join(scratch(), name)
    with _Deadline(limits.deadline_s) as deadline:
        connection = None
        try:
            connection, response = _open_http(url, limits, deadline, shown)
            if response.status != 200:
                raise TestprioError(
                    f"downloading {shown} failed with HTTP {response.status} {response.reason}; "
                    "check the URL and that the file can be read without logging in."
                )
            declared = _content_length(response)
            if declared is not None and declared > limit:
                raise TestprioError(
                    f"{shown} is {declared:,} bytes, more than the download limit of "
                    f"{limit:,} bytes; raise it with --max-data-gb or give a smaller pool."
                )
            budget = ByteBudget(limit, too_large(shown, limit))
            received = _read_body(response, path, budget, limits, shown)
        except TestprioError:
            raise
        except (http.client.HTTPException, OSError) as exc:
            if deadline.expired:
                raise _past_deadline(shown, limits) from None
            if isinstance(exc, TimeoutError):
                raise TestprioError(
                    f"downloading {shown} timed out (no data for {limits.idle_timeout_s:g} s); "
                    "retry, or check the server and the network."
                ) from None
            raise TestprioError(
                f"downloading {shown} failed ({short(exc)}); retry, or check the server and "
                "the network."
            ) from None
        finally:
            if connection is not None:
                connection.close()
    if deadline.expired or (declared is not None and received < declared):
        if deadline.expired:
            raise _past_deadline(shown, limits)
        raise TestprioError(
            f"the download of {shown} ended after {received:,} of {declared:,} bytes; retry, "
            "or check the server."
        )
    return path, name


def _content_length(response) -> int | None:
    try:
        length = int(response.headers.get("Content-Length", ""))
    except ValueError:
        return None
    return length if length >= 0 else None
