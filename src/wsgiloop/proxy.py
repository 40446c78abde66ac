"""Trusted proxy headers: rewrite the WSGI environ from what a reverse proxy says about the client.

Behind nginx (or a load balancer) the TCP peer is the proxy, not the client, and the scheme and
host the client used are lost. Proxies pass them on in ``X-Forwarded-*`` or RFC 7239
``Forwarded`` headers, but any client can send those headers too, so they are believed only when
the *direct* peer is a trusted proxy (``--forwarded-allow-ips``). The rules, and why:

* **Client address (X-Forwarded-For, ``Forwarded: for=``)**: proxies *append* the address they saw,
  so everything left of the entry written by our own proxy is whatever the client sent. The list is
  walked from the right, skipping addresses of trusted proxies; the first untrusted address is the
  client (what nginx's realip module, Apache's mod_remoteip, Express and newer uvicorn do). If every
  entry is trusted, the leftmost one is the client. An entry that is not an IP address
  (``unknown``, an RFC 7239 obfuscated ``_hidden``, garbage) stops the walk and leaves
  ``REMOTE_ADDR`` as it was: past that point nothing can be vouched for. ``REMOTE_PORT`` becomes the
  forwarded port when the entry has one, else ``"0"`` (the proxy's ephemeral port would be a lie).
  A client whose own address is in the list counts as one more proxy (a client on loopback with
  the default list, say), so list only proxies: behind nginx on a Unix socket, list none.
* **``*``** trusts every *direct* peer (for container networks whose proxy address is not known in
  advance), but not the addresses inside the header: with ``*`` alone the rightmost
  X-Forwarded-For entry, the one our proxy wrote, is the client. Taking the leftmost entry, as
  older servers do for ``*``, lets any client pick its own address. To skip further hops of a proxy
  chain (CDN -> nginx -> app), list their networks explicitly.
* **Scheme, host, port (X-Forwarded-Proto/Host/Port)**: proxies normally overwrite these; if one
  appended a list anyway, the rightmost value (written by the proxy we trust) is used. The scheme
  must be ``http`` or ``https`` (``ws``/``wss`` map to them); anything else is ignored. The host
  must pass the grammar the server enforces on the Host field (``strict.valid_host``) and have
  a name; anything else is ignored. ``HTTP_HOST``, ``SERVER_NAME`` and ``SERVER_PORT`` are kept
  consistent so both of PEP 3333's URL reconstruction paths give the client's URL.
* **Which port**: an explicit port in the host in effect (X-Forwarded-Host if given, else the
  request's Host) wins; X-Forwarded-Port only fills in a port that host lacks; else the scheme's
  default. Reason: the Host the client sent carries the port the client used, while nginx's usual
  ``X-Forwarded-Port $server_port`` is the port nginx listens on, which differs as soon as a port
  is mapped (``-p 8080:80``); and nginx's ``$host`` drops the port, which X-Forwarded-Port then
  restores. So X-Forwarded-Port alone never rewrites a Host that has a port (waitress, too, takes
  the port of a forwarded host over X-Forwarded-Port). ``HTTP_HOST`` carries the port only when it
  is not the scheme's default.
* **Forwarded vs. X-Forwarded-\\***: one family is used per request, never a mix. If any
  ``X-Forwarded-*`` header is present it wins and ``Forwarded`` is ignored; ``Forwarded`` is used
  only when no ``X-Forwarded-*`` header is there. Reason: nginx, the usual proxy, sets
  X-Forwarded-* from its config but passes a client's ``Forwarded`` header through untouched, so
  "Forwarded wins" would let any client behind a stock nginx config spoof its address. (The shipped
  nginx config also clears ``Forwarded``.) Within ``Forwarded``, ``proto=``/``host=`` are taken from
  the same element as the chosen ``for=`` (that hop saw the client), falling back to elements to
  its right (trusted proxies).
* **Unix-socket peers** (``REMOTE_ADDR`` ``None`` or empty) are trusted by default, as gunicorn
  does: only local processes allowed by the socket file's permissions can connect (the shipped
  systemd socket unit lets only ``www-data``, i.e. nginx, in), which is narrower than the
  loopback address trusted by default. Pass ``trust_unix=False`` to ``ProxyTrust`` to refuse them.

* **Untrusted peers** (with ``--proxy-headers`` on): X-Forwarded-For/Proto/Host/Port and
  Forwarded are *removed* from the environ, as waitress does by default
  (``clear_untrusted_proxy_headers``): an app or middleware that reads them itself (Django's
  ``USE_X_FORWARDED_HOST``, an IP allow-list on ``HTTP_X_FORWARDED_FOR``) cannot tell a forged one
  from a real one, and the server, told which peers to believe, can. From a trusted peer the
  headers of the family used stay, so apps may still log the chain; the other family (a
  ``Forwarded`` beside X-Forwarded-*, which stock nginx passes through from the client) is removed.
  Without ``--proxy-headers`` the server interprets and removes nothing: the app's own middleware
  (werkzeug's ``ProxyFix``, say) is then in charge.
* **REMOTE_HOST** follows ``REMOTE_ADDR`` (see ``environ.connection_environ``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Any

from .config import ConfigError
from .strict import valid_host

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_DEFAULT_PORTS = {"http": "80", "https": "443"}

_X_FORWARDED = (
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_FORWARDED_PORT",
)

# One piece of a Forwarded header: a separator, or a ``key=value`` pair. Values are quoted
# strings (RFC 9110 qdtext and quoted-pair) or unquoted; unquoted values are accepted a bit more
# loosely than RFC 7239's token, as proxies emit ``for=192.0.2.1:4711`` unquoted, but only with
# visible ASCII other than quotes and separators.
_FORWARDED_PIECE_RE = re.compile(
    r"[ \t]*(?:(?P<sep>[;,])|(?P<key>[!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*=[ \t]*(?P<value>"
    r"\"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*\""
    r"|[\x21\x23-\x2b\x2d-\x3a\x3c-\x7e]*))"
)
_QUOTED_PAIR_RE = re.compile(r"\\(.)")

_CACHE_LIMIT = 1024


class ProxyTrust:
    """Which direct peers may set proxy headers, and which addresses are proxy hops.

    ``allow`` holds IP addresses, CIDR networks (IPv4 or IPv6; host bits are ignored) and ``*``;
    an entry may itself be a comma-separated list, as an environment variable would give it.
    Everything is parsed once here so the per-request check is a set lookup in the common case.
    """

    __slots__ = ("_allow_all", "_cache", "_exact", "_nets4", "_nets6", "_trust_unix")

    def __init__(self, allow: Sequence[str], *, trust_unix: bool = True) -> None:
        self._allow_all = False
        self._trust_unix = trust_unix
        exact: set[str] = set()
        nets4: list[ipaddress.IPv4Network] = []
        nets6: list[ipaddress.IPv6Network] = []
        for item in allow:
            for raw in item.split(","):
                entry = raw.strip()
                if not entry:
                    continue
                if entry == "*":
                    self._allow_all = True
                    continue
                try:
                    net = ipaddress.ip_network(entry.strip("[]"), strict=False)
                except ValueError:
                    raise ConfigError(
                        f"--forwarded-allow-ips: {entry!r} is not an IP address, a network or '*'"
                    ) from None
                if isinstance(net, ipaddress.IPv4Network):
                    nets4.append(net)
                else:
                    nets6.append(net)
                if net.num_addresses == 1:
                    exact.add(str(net.network_address))
        self._exact = frozenset(exact)
        self._nets4 = tuple(nets4)
        self._nets6 = tuple(nets6)
        # Peer string -> verdict. The peers of a proxied server are a handful of proxy addresses,
        # so this saves parsing on nearly every request; it is cleared when full so a flood of
        # distinct peers cannot grow it. Races between threads only cost a recomputation.
        self._cache: dict[str, bool] = {}

    def __repr__(self) -> str:
        nets = [str(n) for n in (*self._nets4, *self._nets6)]
        if self._allow_all:
            nets.insert(0, "*")
        return f"ProxyTrust({nets!r}, trust_unix={self._trust_unix})"

    def is_trusted(self, peer: str | None) -> bool:
        """Whether the direct peer ``peer`` (``REMOTE_ADDR``) may set proxy headers.

        ``None`` or ``""`` is a Unix-socket peer, trusted unless ``trust_unix=False``.
        """
        if not peer:
            return self._trust_unix
        if self._allow_all or peer in self._exact:
            return True
        verdict = self._cache.get(peer)
        if verdict is None:
            ip = _parse_ip(peer)
            verdict = ip is not None and self._trusts_hop(ip)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[peer] = verdict
        return verdict

    def _trusts_hop(self, ip: IPAddress) -> bool:
        """Whether ``ip``, an address found inside a forwarding header, is one of our proxies.

        Only explicit addresses and networks count here, never ``*`` (see the module docstring).
        """
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            else:
                return any(ip in net for net in self._nets6)
        return any(ip in net for net in self._nets4)


def apply_proxy_headers(environ: dict[str, Any], trust: ProxyTrust) -> None:
    """Rewrite ``environ`` in place from the proxy headers if the direct peer is trusted; remove
    them if it is not.

    Call it after the environ is built and before the app sees it. Costs a few dict lookups when
    the request carries no proxy header. See the module docstring for the rules.
    """
    if (
        "HTTP_X_FORWARDED_FOR" not in environ
        and "HTTP_X_FORWARDED_PROTO" not in environ
        and "HTTP_X_FORWARDED_HOST" not in environ
        and "HTTP_X_FORWARDED_PORT" not in environ
    ):
        # The common case of a request without proxy headers: five `in` tests and out.
        if "HTTP_FORWARDED" in environ:
            if trust.is_trusted(environ.get("REMOTE_ADDR")):
                _apply_forwarded(environ, environ["HTTP_FORWARDED"], trust)
            else:
                del environ["HTTP_FORWARDED"]
        return
    get = environ.get
    if not trust.is_trusted(get("REMOTE_ADDR")):
        for key in _X_FORWARDED:
            environ.pop(key, None)
        environ.pop("HTTP_FORWARDED", None)
        return
    environ.pop("HTTP_FORWARDED", None)  # one family per request: see the module docstring
    xff = get("HTTP_X_FORWARDED_FOR")
    xproto = get("HTTP_X_FORWARDED_PROTO")
    xhost = get("HTTP_X_FORWARDED_HOST")
    xport = get("HTTP_X_FORWARDED_PORT")
    if xff is not None:
        client = _client_from_list(xff, trust)
        if client is not None:
            _set_client(environ, *client)
    scheme = _SCHEMES.get(_last(xproto).lower()) if xproto is not None else None
    host = _last(xhost) if xhost is not None else None
    port = _parse_port(_last(xport)) if xport is not None else None
    _set_location(environ, scheme, host, port)


def _apply_forwarded(environ: dict[str, Any], value: str, trust: ProxyTrust) -> None:
    """Apply an RFC 7239 ``Forwarded`` header (already known to come from a trusted peer)."""
    elements = _parse_forwarded(value)
    if not elements:
        return
    chosen = 0
    client: tuple[IPAddress, str | None] | None = None
    for index in range(len(elements) - 1, -1, -1):
        node = elements[index].get("for")
        parsed = _parse_node(node) if node is not None else None
        chosen = index
        client = parsed
        if parsed is None or not trust._trusts_hop(parsed[0]):
            break
    if client is not None:
        _set_client(environ, *client)
    # proto= and host= describe what the chosen hop saw; fall back to the trusted hops after it.
    later = elements[chosen:]
    proto = next((e["proto"] for e in later if "proto" in e), None)
    host = next((e["host"] for e in later if "host" in e), None)
    scheme = _SCHEMES.get(proto.strip().lower()) if proto is not None else None
    _set_location(environ, scheme, host, None)


def _set_client(environ: dict[str, Any], ip: IPAddress, port: str | None) -> None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    environ["REMOTE_ADDR"] = environ["REMOTE_HOST"] = str(ip)
    environ["REMOTE_PORT"] = port or "0"


def _set_location(
    environ: dict[str, Any], scheme: str | None, host: str | None, port: str | None
) -> None:
    """Set scheme, ``HTTP_HOST``, ``SERVER_NAME`` and ``SERVER_PORT`` consistently.

    The port is, in order: the port in the (forwarded, else original) host, the forwarded port,
    the scheme's default. ``HTTP_HOST`` carries the port only when it is not the scheme's default.
    """
    match = _valid_host(host.strip()) if host is not None else None
    if scheme is None and match is None and port is None:
        return
    if scheme is not None:
        environ["wsgi.url_scheme"] = scheme
    else:
        scheme = environ.get("wsgi.url_scheme", "http")
    default_port = _DEFAULT_PORTS.get(scheme, "80")
    if match is None:
        original = environ.get("HTTP_HOST")
        if original:
            match = _valid_host(original.strip())
    if match is not None:
        name, host_port = match
        port = _parse_port(host_port or "") or port or default_port
        environ["SERVER_NAME"] = name
        environ["HTTP_HOST"] = name if port == default_port else f"{name}:{port}"
    environ["SERVER_PORT"] = port or default_port


def _valid_host(value: str) -> tuple[str, str | None] | None:
    """(host, port or None) of ``host[:port]`` in the Host field's grammar (``strict``), with a
    non-empty host; else None."""
    try:
        match = valid_host(value.encode("ascii"))
    except UnicodeEncodeError:
        return None
    if match is None or not match[1]:
        return None
    port = match[2]
    return match[1].decode("ascii"), port.decode("ascii") if port is not None else None


def _client_from_list(value: str, trust: ProxyTrust) -> tuple[IPAddress, str | None] | None:
    """The client of an X-Forwarded-For list: rightmost untrusted entry, else the leftmost."""
    found: tuple[IPAddress, str | None] | None = None
    for raw in reversed(value.split(",")):
        if not raw.strip():
            continue
        parsed = _parse_node(raw)
        if parsed is None:
            return None
        found = parsed
        if not trust._trusts_hop(parsed[0]):
            break
    return found


def _parse_node(value: str) -> tuple[IPAddress, str | None] | None:
    """Parse ``1.2.3.4``, ``1.2.3.4:80``, ``[::1]``, ``[::1]:80`` or a bare ``::1``.

    Returns ``(address, port or None)``, or None for anything that is not an IP address
    (``unknown``, obfuscated ``_name`` identifiers, garbage). Obfuscated ports become None.
    """
    value = value.strip()
    port = ""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                return None
            port = rest[1:]
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host = value
    ip = _parse_ip(host)
    if ip is None:
        return None
    return ip, _parse_port(port) if port else None


def _parse_ip(value: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _parse_port(value: str) -> str | None:
    value = value.strip()
    if not value.isdigit() or len(value) > 5:
        return None
    number = int(value)
    return str(number) if 0 < number < 65536 else None


def _last(value: str) -> str:
    """The rightmost item of a comma-separated header value, stripped."""
    return value.rpartition(",")[2].strip()


def _parse_forwarded(value: str) -> list[dict[str, str]] | None:
    """Parse an RFC 7239 ``Forwarded`` value into one dict per element (keys lower-cased).

    Returns None when the value is malformed (two pairs without a separator, a repeated
    parameter in one element, stray characters): a half-understood header is not applied at all.
    """
    elements: list[dict[str, str]] = []
    current: dict[str, str] = {}
    need_separator = False
    pos, end = 0, len(value)
    while pos < end:
        match = _FORWARDED_PIECE_RE.match(value, pos)
        if match is None or match.end() == pos:
            if value[pos:].strip():
                return None
            break
        pos = match.end()
        separator = match["sep"]
        if separator is not None:
            if separator == "," and current:
                elements.append(current)
                current = {}
            need_separator = False
            continue
        key = match["key"].lower()
        if need_separator or key in current:
            return None
        raw = match["value"]
        if raw.startswith('"'):
            raw = _QUOTED_PAIR_RE.sub(r"\1", raw[1:-1])
        current[key] = raw
        need_separator = True
    if current:
        elements.append(current)
    return elements
