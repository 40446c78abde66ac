"""The PROXY protocol (HAProxy's, versions 1 and 2), sans-IO: who the client really is.

A TCP load balancer (HAProxy, AWS NLB, GCP, ...) that does not speak HTTP can still tell the
server the client's address: it sends one PROXY header before the client's first byte. With
``--proxy-protocol``, a connection from ``--proxy-allow-from`` may begin with one; what it says
becomes the connection's ``REMOTE_ADDR``/``REMOTE_PORT`` (and, for version 2 with the SSL TLV,
the scheme ``https``). Everything else about the header is checked as the specification
(haproxy.org, "The PROXY protocol", versions 1 and 2) has it, and a header that breaks it closes
the connection: a load balancer that sends garbage is misconfigured, and no HTTP answer would
reach a person. A connection from anyone else that starts with a PROXY header is refused the
same way: believing it would let any client choose its own address.

``parse(data)`` returns ``NEED_MORE`` until a whole header is in, then the header and its length;
``NOT_PROXY`` when the data cannot start a header (the header is optional, so this is plain HTTP).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX: Final = b"PROXY "
V1_MAX: Final = 107  # the longest version 1 line, CRLF included (the specification's figure)
#: Version 2 allows 64 KiB of addresses and TLVs; real ones (addresses, an SSL TLV with the
#: cipher and the client certificate's CN, an id) stay far below this.
V2_MAX: Final = 16 + 4096
_V2_HEAD = struct.Struct("!12sBBH")
_PP2_TYPE_SSL: Final = 0x20
_PP2_CLIENT_SSL: Final = 0x01


class ProxyHeaderError(ValueError):
    """A PROXY header that breaks the specification."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What a PROXY header says. ``client`` is None for ``UNKNOWN`` (v1) and ``LOCAL`` (v2),
    which a balancer sends for its own health checks: the connection's own addresses stand."""

    client: tuple[str, int] | None
    tls: bool = False


class _Verdict:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_MORE: Final = _Verdict("NEED_MORE")
NOT_PROXY: Final = _Verdict("NOT_PROXY")


def parse(data: bytes | bytearray) -> tuple[ProxyHeader, int] | _Verdict:
    """The header at the start of ``data`` and its length, ``NEED_MORE`` or ``NOT_PROXY``;
    ``ProxyHeaderError`` if it is broken."""
    if data[:1] == b"P":
        if not _V1_PREFIX.startswith(bytes(data[:6])):
            return NOT_PROXY
        return _parse_v1(data)
    if data[:1] == b"\r":
        if not V2_SIGNATURE.startswith(bytes(data[:12])):
            return NOT_PROXY
        return _parse_v2(data)
    return NOT_PROXY if data else NEED_MORE


def starts_like_proxy(data: bytes | bytearray) -> bool:
    """Whether ``data`` begins as a PROXY header would (for refusing one from a stranger)."""
    return bytes(data[:6]) == _V1_PREFIX or bytes(data[:12]) == V2_SIGNATURE


def _parse_v1(data: bytes | bytearray) -> tuple[ProxyHeader, int] | _Verdict:
    end = bytes(data[:V1_MAX]).find(b"\r\n")
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyHeaderError("PROXY v1 line longer than 107 bytes")
        return NEED_MORE
    line = bytes(data[:end])
    parts = line.split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return ProxyHeader(None), end + 2  # the rest of the line is to be ignored
    if len(parts) != 6:
        raise ProxyHeaderError(f"PROXY v1 line has {len(parts)} fields, not 6")
    _, family, source, _dest, source_port, dest_port = parts
    if family == b"TCP4":
        version = 4
    elif family == b"TCP6":
        version = 6
    else:
        raise ProxyHeaderError(f"PROXY v1 protocol {family!r} is neither TCP4, TCP6 nor UNKNOWN")
    host = _address(source, version)
    _address(_dest, version)
    port = _port(source_port)
    _port(dest_port)
    return ProxyHeader((host, port)), end + 2


def _address(raw: bytes, version: int) -> str:
    try:
        ip = ipaddress.ip_address(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError(f"PROXY v1 address {raw!r} is not an IP address") from None
    if ip.version != version:
        raise ProxyHeaderError(f"PROXY v1 address {raw!r} is not IPv{version}")
    return str(ip)


def _port(raw: bytes) -> int:
    # Decimal, 0-65535, no leading zero (the specification: "the port number in decimal").
    if not raw.isdigit() or (len(raw) > 1 and raw[:1] == b"0") or int(raw) > 65535:
        raise ProxyHeaderError(f"PROXY v1 port {raw!r} is not a port number")
    return int(raw)


def _parse_v2(data: bytes | bytearray) -> tuple[ProxyHeader, int] | _Verdict:
    if len(data) < 16:
        return NEED_MORE
    _, ver_cmd, family, length = _V2_HEAD.unpack_from(data)
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 version {ver_cmd >> 4}, not 2")
    command = ver_cmd & 0x0F
    if command > 1:
        raise ProxyHeaderError(f"PROXY v2 command {command} is neither LOCAL nor PROXY")
    total = 16 + length
    if total > V2_MAX:
        raise ProxyHeaderError(f"PROXY v2 header of {total} bytes (at most {V2_MAX})")
    if len(data) < total:
        return NEED_MORE
    body = bytes(data[16:total])
    address_family, transport = family >> 4, family & 0x0F
    client: tuple[str, int] | None = None
    if address_family == 1:  # AF_INET: src, dst, src port, dst port
        size = 12
        if len(body) < size:
            raise ProxyHeaderError("PROXY v2 IPv4 addresses cut short")
        client = (str(ipaddress.IPv4Address(body[:4])), int.from_bytes(body[8:10], "big"))
    elif address_family == 2:  # AF_INET6
        size = 36
        if len(body) < size:
            raise ProxyHeaderError("PROXY v2 IPv6 addresses cut short")
        client = (str(ipaddress.IPv6Address(body[:16])), int.from_bytes(body[32:34], "big"))
    elif address_family == 3:  # AF_UNIX: two 108-byte paths; no address to give the app
        size = 216
        if len(body) < size:
            raise ProxyHeaderError("PROXY v2 Unix addresses cut short")
    elif address_family == 0:
        size = 0
    else:
        raise ProxyHeaderError(f"PROXY v2 address family {address_family} is unknown")
    if transport > 2:
        raise ProxyHeaderError(f"PROXY v2 transport {transport} is unknown")
    tls = _tls_from_tlvs(body[size:])
    if command == 0 or address_family not in (1, 2):
        client = None  # LOCAL (the balancer's own check), or no IP address to give
    return ProxyHeader(client, tls), total


def _tls_from_tlvs(tlvs: bytes) -> bool:
    """Walk the TLVs (each: type, 2-byte length, value); True if PP2_TYPE_SSL says the client
    connected over TLS."""
    tls = False
    i = 0
    while i < len(tlvs):
        if len(tlvs) - i < 3:
            raise ProxyHeaderError("PROXY v2 TLV cut short")
        kind = tlvs[i]
        size = int.from_bytes(tlvs[i + 1 : i + 3], "big")
        value = tlvs[i + 3 : i + 3 + size]
        if len(value) != size:
            raise ProxyHeaderError("PROXY v2 TLV value cut short")
        if kind == _PP2_TYPE_SSL:
            if size < 5:
                raise ProxyHeaderError("PROXY v2 SSL TLV cut short")
            tls = bool(value[0] & _PP2_CLIENT_SSL)
        i += 3 + size
    return tls
