"""The PROXY protocol (HAProxy's spec, v1 and v2), with real header bytes over real sockets,
and the parser sans-IO."""

from __future__ import annotations

import socket
import struct

import pytest
from apps import peer
from conftest import is_closed, read_response

from wsgiloop import proxy_protocol
from wsgiloop.proxy_protocol import NEED_MORE, NOT_PROXY, ProxyHeader, ProxyHeaderError, parse

SIG = proxy_protocol.V2_SIGNATURE
GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


def v2(command: int = 1, family: int = 0x11, body: bytes = b"", tlvs: bytes = b"") -> bytes:
    payload = body + tlvs
    return SIG + struct.pack("!BBH", 0x20 | command, family, len(payload)) + payload


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
            + struct.pack("!HH", sport, dport))


SSL_TLV = bytes([0x20]) + struct.pack("!H", 5) + b"\x01" + b"\x00\x00\x00\x00"

# -- the parser --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET", ("192.168.0.1", 56324)),
        (b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 443\r\n", ("2001:db8::1", 4000)),
        (b"PROXY UNKNOWN\r\n", None),
        (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", None),
    ],
)
def test_v1_lines_from_the_specification(data, expected):
    result = parse(data)
    assert isinstance(result, tuple)
    header, size = result
    assert header.client == expected
    assert data[size - 2:size] == b"\r\n"


@pytest.mark.parametrize(
    "data",
    [
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n",  # a field missing
        b"PROXY TCP4 192.168.0.1  192.168.0.11 56324 443\r\n",  # two spaces
        b"PROXY TCP5 192.168.0.1 192.168.0.11 56324 443\r\n",
        b"PROXY TCP4 ::1 ::1 56324 443\r\n",  # IPv6 in TCP4
        b"PROXY TCP4 256.0.0.1 192.168.0.11 56324 443\r\n",
        b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n",
        b"PROXY TCP4 192.168.0.1 192.168.0.11 0443 443\r\n",  # a leading zero
        b"PROXY " + b"x" * 120,  # no CRLF within 107 bytes
    ],
)
def test_broken_v1_lines_are_refused(data):
    with pytest.raises(ProxyHeaderError):
        parse(data)


def test_headers_cut_anywhere_wait_for_more_and_plain_http_is_not_proxy():
    whole = v2(body=inet("10.1.2.3", "10.0.0.1", 5555, 80))
    for cut in range(len(whole)):
        assert parse(whole[:cut]) is NEED_MORE
    line = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"
    for cut in range(len(line) - 1):
        assert parse(line[:cut]) is NEED_MORE
    assert parse(GET) is NOT_PROXY
    assert parse(b"\r\nGET / HTTP/1.1\r\n") is NOT_PROXY  # an empty line, not a signature
    assert parse(b"POST / HTTP/1.1\r\n") is NOT_PROXY


def test_v2_addresses_local_and_the_ssl_tlv():
    assert parse(v2(body=inet("10.1.2.3", "10.0.0.1", 5555, 80))) == (
        ProxyHeader(("10.1.2.3", 5555)), 28)
    assert parse(v2(family=0x21, body=inet6("2001:db8::5", "2001:db8::1", 7, 443)))[0] == (
        ProxyHeader(("2001:db8::5", 7)))
    header, _ = parse(v2(body=inet("10.1.2.3", "10.0.0.1", 5555, 443), tlvs=SSL_TLV))
    assert header == ProxyHeader(("10.1.2.3", 5555), tls=True)
    # LOCAL: the balancer's own health check; the connection's addresses stand.
    assert parse(v2(command=0, family=0x00))[0] == ProxyHeader(None)


@pytest.mark.parametrize(
    "data",
    [
        SIG + bytes([0x11, 0x11]) + struct.pack("!H", 12) + b"\0" * 12,  # version 1 in a v2
        v2(command=2, body=inet("1.2.3.4", "5.6.7.8", 1, 2)),  # no such command
        v2(family=0x11, body=b"\0" * 5),  # IPv4 addresses cut short
        v2(family=0x51, body=b""),  # no such family
        v2(body=inet("1.2.3.4", "5.6.7.8", 1, 2), tlvs=b"\x20\x00\x09\x01"),  # TLV cut short
        SIG + bytes([0x21, 0x11]) + struct.pack("!H", 65535),  # far beyond any real header
    ],
)
def test_broken_v2_headers_are_refused(data):
    with pytest.raises(ProxyHeaderError):
        parse(data)


# -- over real sockets ---------------------------------------------------------------------------


def ask(server, data: bytes) -> bytes:
    sock = server.connect()
    sock.sendall(data)
    status, _, body = read_response(sock)
    sock.close()
    assert status == 200
    return body


def test_a_trusted_balancer_sets_the_client_address_v1(serve):
    server = serve(peer, proxy_protocol=True)
    assert ask(server, b"PROXY TCP4 203.0.113.7 10.0.0.1 40001 443\r\n" + GET) == \
        b"203.0.113.7 40001 http"


def test_a_trusted_balancer_sets_address_and_scheme_v2_in_pieces(serve):
    server = serve(peer, proxy_protocol=True)
    header = v2(family=0x21, body=inet6("2001:db8::7", "2001:db8::1", 40002, 443), tlvs=SSL_TLV)
    sock = server.connect()
    for i in range(0, len(header), 7):  # the header dribbles in
        sock.sendall(header[i:i + 7])
    sock.sendall(GET)
    status, _, body = read_response(sock)
    assert (status, body) == (200, b"2001:db8::7 40002 https")
    # Later requests on the connection keep what the header said.
    sock.sendall(GET)
    assert read_response(sock)[2] == b"2001:db8::7 40002 https"
    sock.close()


def test_without_a_header_a_trusted_peer_is_served_as_itself(serve):
    server = serve(peer, proxy_protocol=True)
    assert ask(server, GET).startswith(b"127.0.0.1 ")
    assert ask(server, v2(command=0, family=0) + GET).startswith(b"127.0.0.1 ")


@pytest.mark.parametrize(
    "header",
    [b"PROXY TCP4 203.0.113.7 10.0.0.1 40001 443\r\n", v2(body=inet("1.2.3.4", "5.6.7.8", 1, 2))],
)
def test_a_header_from_a_peer_not_allowed_is_refused_and_closed(serve, header):
    server = serve(peer, proxy_protocol=True, proxy_allow_ips=["10.9.9.9"])
    sock = server.connect()
    sock.sendall(header + GET)
    assert is_closed(sock)
    assert sock.recv(100) == b""  # not even an HTTP answer: nothing to say to a forger


def test_a_malformed_header_from_the_balancer_closes_the_connection(serve):
    server = serve(peer, proxy_protocol=True)
    sock = server.connect()
    sock.sendall(b"PROXY TCP4 1.2.3.4 nonsense 1 2\r\n" + GET)
    assert is_closed(sock)


def test_without_the_option_a_proxy_line_is_a_bad_request(serve):
    server = serve(peer)
    sock = server.connect()
    sock.sendall(b"PROXY TCP4 203.0.113.7 10.0.0.1 40001 443\r\n" + GET)
    assert read_response(sock)[0] == 400
    sock.close()


def test_a_header_field_over_the_field_size_limit_gets_431(serve):
    server = serve(peer, limit_request_field_size=100)
    sock = server.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 200 + b"\r\n\r\n")
    assert read_response(sock)[0] == 431
    sock.close()
    assert ask(server, b"GET / HTTP/1.1\r\nHost: t\r\nX-Small: " + b"a" * 50 + b"\r\n\r\n")
