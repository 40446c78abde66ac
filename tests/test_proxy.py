"""Trusted proxy headers (``wsgiloop.proxy``): trust parsing, each header form, spoofing."""

from __future__ import annotations

from typing import Any

import pytest

from wsgiloop.config import ConfigError
from wsgiloop.proxy import ProxyTrust, apply_proxy_headers

NGINX = "127.0.0.1"


def make_environ(peer: str = NGINX, **headers: str) -> dict[str, Any]:
    """An environ as the server builds it for a plain-HTTP TCP connection to port 8000."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "REMOTE_ADDR": peer,
        "REMOTE_PORT": "50000" if peer else "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "HTTP_HOST": "backend:8000",
        "wsgi.url_scheme": "http",
    }
    for name, value in headers.items():
        environ["HTTP_" + name.upper()] = value
    return environ


def applied(
    trust: ProxyTrust | None = None, peer: str = NGINX, /, **headers: str
) -> dict[str, Any]:
    environ = make_environ(peer, **headers)
    apply_proxy_headers(environ, trust or ProxyTrust(["127.0.0.1", "::1"]))
    return environ


# --- trust parsing ------------------------------------------------------------------------------


def test_exact_addresses_v4_and_v6() -> None:
    trust = ProxyTrust(["127.0.0.1", "::1", "2001:db8::5"])
    assert trust.is_trusted("127.0.0.1")
    assert trust.is_trusted("::1")
    assert trust.is_trusted("2001:db8::5")
    assert trust.is_trusted("2001:0db8:0000::0005")  # another spelling of the same address
    assert not trust.is_trusted("127.0.0.2")
    assert not trust.is_trusted("2001:db8::6")


def test_networks_v4_and_v6() -> None:
    trust = ProxyTrust(["10.0.0.0/8", "2001:db8::/32"])
    assert trust.is_trusted("10.255.1.2")
    assert trust.is_trusted("2001:db8:1::1")
    assert not trust.is_trusted("11.0.0.1")
    assert not trust.is_trusted("2001:db9::1")
    # Host bits in a network are tolerated, as people write them.
    assert ProxyTrust(["192.168.1.7/24"]).is_trusted("192.168.1.200")


def test_ipv4_mapped_peer_matches_ipv4_entry() -> None:
    # A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d.
    assert ProxyTrust(["127.0.0.1"]).is_trusted("::ffff:127.0.0.1")
    assert ProxyTrust(["10.0.0.0/8"]).is_trusted("::ffff:10.1.1.1")
    assert not ProxyTrust(["10.0.0.0/8"]).is_trusted("::ffff:11.1.1.1")


def test_star_trusts_every_peer() -> None:
    trust = ProxyTrust(["*"])
    assert trust.is_trusted("203.0.113.9")
    assert trust.is_trusted("2001:db8::1")


def test_comma_separated_entries_and_whitespace() -> None:
    trust = ProxyTrust([" 10.0.0.1 , 10.0.0.2", "", "[::1]"])
    assert trust.is_trusted("10.0.0.1")
    assert trust.is_trusted("10.0.0.2")
    assert trust.is_trusted("::1")
    assert not trust.is_trusted("10.0.0.3")


@pytest.mark.parametrize("bad", ["localhost", "10.0.0.0/33", "1.2.3", "nginx.internal", "*.*"])
def test_invalid_entries_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError, match="forwarded-allow-ips"):
        ProxyTrust([bad])


def test_garbage_peer_is_not_trusted() -> None:
    assert not ProxyTrust(["127.0.0.1"]).is_trusted("not-an-ip")


def test_unix_socket_peer_trusted_by_default_and_can_be_refused() -> None:
    assert ProxyTrust(["127.0.0.1"]).is_trusted(None)
    assert ProxyTrust([]).is_trusted("")
    assert not ProxyTrust(["*"], trust_unix=False).is_trusted("")
    assert not ProxyTrust(["127.0.0.1"], trust_unix=False).is_trusted(None)


def test_verdict_cache_stays_bounded_and_correct() -> None:
    trust = ProxyTrust(["10.0.0.0/8"])
    for i in range(3000):
        peer = f"10.{i // 256 % 256}.{i % 256}.1" if i % 2 else f"11.0.{i // 256}.{i % 256}"
        assert trust.is_trusted(peer) == bool(i % 2)
    assert len(trust._cache) <= 1024


# --- untrusted peers: nothing applied, the headers removed -------------------------------------


def test_untrusted_peer_cannot_spoof_anything_and_its_headers_are_removed() -> None:
    headers = {
        "x_forwarded_for": "1.2.3.4",
        "x_forwarded_proto": "https",
        "x_forwarded_host": "evil.example",
        "x_forwarded_port": "443",
        "forwarded": "for=5.6.7.8",
    }
    after = applied(None, "203.0.113.50", **headers)
    assert after == make_environ("203.0.113.50")  # as if the client had sent none of them


def test_untrusted_peer_cannot_spoof_with_forwarded() -> None:
    value = 'for=1.2.3.4;proto=https;host="evil.example"'
    assert applied(None, "203.0.113.50", forwarded=value) == make_environ("203.0.113.50")


def test_trusted_peer_keeps_the_headers_it_applied_and_drops_the_other_family() -> None:
    env = applied(x_forwarded_for="1.2.3.4", x_forwarded_proto="https", forwarded="for=6.6.6.6")
    assert (env["REMOTE_ADDR"], env["REMOTE_HOST"]) == ("1.2.3.4", "1.2.3.4")
    assert env["HTTP_X_FORWARDED_FOR"] == "1.2.3.4"
    assert env["HTTP_X_FORWARDED_PROTO"] == "https"
    assert "HTTP_FORWARDED" not in env  # a client's, passed through by a stock nginx


def test_no_proxy_headers_changes_nothing() -> None:
    assert applied() == make_environ()


def test_trust_unix_false_ignores_unix_peer() -> None:
    trust = ProxyTrust(["*"], trust_unix=False)
    assert applied(trust, "", x_forwarded_for="1.2.3.4")["REMOTE_ADDR"] == ""


# --- X-Forwarded-For ------------------------------------------------------------------------------


def test_xff_single_address() -> None:
    env = applied(x_forwarded_for="203.0.113.7")
    assert env["REMOTE_ADDR"] == "203.0.113.7"
    assert env["REMOTE_PORT"] == "0"  # the proxy's ephemeral port must not stay


def test_xff_client_prefix_is_not_believed() -> None:
    # The client sent "X-Forwarded-For: 6.6.6.6"; nginx appended the real address.
    assert applied(x_forwarded_for="6.6.6.6, 203.0.113.7")["REMOTE_ADDR"] == "203.0.113.7"


def test_xff_walks_past_trusted_hops() -> None:
    trust = ProxyTrust(["127.0.0.1", "10.0.0.0/8"])
    env = applied(trust, x_forwarded_for="6.6.6.6, 203.0.113.7, 10.0.0.2, 10.0.0.3")
    assert env["REMOTE_ADDR"] == "203.0.113.7"


def test_xff_all_trusted_takes_leftmost() -> None:
    trust = ProxyTrust(["127.0.0.1", "10.0.0.0/8"])
    assert applied(trust, x_forwarded_for="10.0.0.9, 10.0.0.2")["REMOTE_ADDR"] == "10.0.0.9"


def test_xff_star_uses_rightmost_entry() -> None:
    # "*" trusts the direct peer, not the addresses a client may have put in the header.
    trust = ProxyTrust(["*"])
    env = applied(trust, "172.17.0.1", x_forwarded_for="6.6.6.6, 203.0.113.7")
    assert env["REMOTE_ADDR"] == "203.0.113.7"


def test_xff_star_plus_networks_skips_those_networks() -> None:
    trust = ProxyTrust(["*", "10.0.0.0/8"])
    env = applied(trust, "172.17.0.1", x_forwarded_for="6.6.6.6, 203.0.113.7, 10.1.1.1")
    assert env["REMOTE_ADDR"] == "203.0.113.7"


def test_xff_ipv6_forms_and_ports() -> None:
    assert applied(x_forwarded_for="2001:db8::1")["REMOTE_ADDR"] == "2001:db8::1"
    env = applied(x_forwarded_for="[2001:db8::1]:4711")
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("2001:db8::1", "4711")
    env = applied(x_forwarded_for="203.0.113.7:5555")
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("203.0.113.7", "5555")
    # Canonical spelling, and IPv4-mapped addresses as plain IPv4.
    assert applied(x_forwarded_for="2001:DB8:0::1")["REMOTE_ADDR"] == "2001:db8::1"
    assert applied(x_forwarded_for="::ffff:203.0.113.7")["REMOTE_ADDR"] == "203.0.113.7"


@pytest.mark.parametrize("value", ["unknown", "_hidden", "garbage", "1.2.3.4.5", "[::1", ""])
def test_xff_non_address_leaves_remote_addr(value: str) -> None:
    env = applied(x_forwarded_for=value)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == (NGINX, "50000")


def test_xff_non_address_stops_the_walk() -> None:
    trust = ProxyTrust(["127.0.0.1", "10.0.0.0/8"])
    env = applied(trust, x_forwarded_for="203.0.113.7, unknown, 10.0.0.2")
    assert env["REMOTE_ADDR"] == NGINX


def test_xff_over_unix_socket() -> None:
    env = applied(None, "", x_forwarded_for="6.6.6.6, 203.0.113.7")
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("203.0.113.7", "0")


def test_xff_trusted_ipv6_peer() -> None:
    env = applied(None, "::1", x_forwarded_for="203.0.113.7")
    assert env["REMOTE_ADDR"] == "203.0.113.7"


# --- X-Forwarded-Proto / Host / Port --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "scheme"),
    [("https", "https"), ("HTTPS", "https"), (" http ", "http"), ("wss", "https"), ("ws", "http")],
)
def test_proto_values(value: str, scheme: str) -> None:
    assert applied(x_forwarded_proto=value)["wsgi.url_scheme"] == scheme


@pytest.mark.parametrize("value", ["ftp", "https;", "javascript", ""])
def test_proto_other_values_ignored(value: str) -> None:
    env = applied(x_forwarded_proto=value)
    assert env["wsgi.url_scheme"] == "http"
    assert env["SERVER_PORT"] == "8000"


def test_proto_https_sets_default_port_when_host_has_none() -> None:
    env = applied(x_forwarded_proto="https", host="example.com")
    assert env["wsgi.url_scheme"] == "https"
    assert (env["HTTP_HOST"], env["SERVER_NAME"], env["SERVER_PORT"]) == (
        "example.com",
        "example.com",
        "443",
    )


def test_proto_list_takes_rightmost() -> None:
    assert applied(x_forwarded_proto="http, https")["wsgi.url_scheme"] == "https"


def test_host_port_and_proto_together() -> None:
    env = applied(
        x_forwarded_proto="https", x_forwarded_host="example.com", x_forwarded_port="8443"
    )
    assert env["wsgi.url_scheme"] == "https"
    assert env["HTTP_HOST"] == "example.com:8443"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("example.com", "8443")


def test_forwarded_port_that_is_the_default_is_not_in_host() -> None:
    env = applied(x_forwarded_proto="https", x_forwarded_host="example.com", x_forwarded_port="443")
    assert (env["HTTP_HOST"], env["SERVER_PORT"]) == ("example.com", "443")


def test_host_with_port() -> None:
    env = applied(x_forwarded_host="example.com:8080")
    assert env["HTTP_HOST"] == "example.com:8080"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("example.com", "8080")


def test_port_in_forwarded_host_wins_over_forwarded_port() -> None:
    # -p 8080:80 in front of nginx: the client typed :8080, nginx's $server_port says 80.
    env = applied(x_forwarded_host="example.com:8080", x_forwarded_port="80")
    assert env["HTTP_HOST"] == "example.com:8080"
    assert env["SERVER_PORT"] == "8080"


def test_port_alone_does_not_rewrite_a_host_that_has_a_port() -> None:
    # The case of issue 14: before, HTTP_HOST became www.example.com:5000.
    env = applied(host="www.example.com:8080", x_forwarded_port="5000")
    assert env["HTTP_HOST"] == "www.example.com:8080"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("www.example.com", "8080")
    assert env["HTTP_X_FORWARDED_PORT"] == "5000"  # trusted: kept for the app's logs


def test_forwarded_port_fills_in_the_port_of_a_forwarded_host_without_one() -> None:
    env = applied(x_forwarded_host="example.com", x_forwarded_port="9090")
    assert env["HTTP_HOST"] == "example.com:9090"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("example.com", "9090")


def test_port_alone_rewrites_original_host() -> None:
    # nginx's $host drops the port; X-Forwarded-Port brings it back.
    env = applied(host="example.com", x_forwarded_port="8080")
    assert env["HTTP_HOST"] == "example.com:8080"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("example.com", "8080")


def test_ipv6_host() -> None:
    env = applied(x_forwarded_host="[2001:db8::1]:8443", x_forwarded_proto="https")
    assert env["HTTP_HOST"] == "[2001:db8::1]:8443"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("[2001:db8::1]", "8443")


@pytest.mark.parametrize(
    "value",
    ["evil.example/path", "a b", "user@evil.example", "example.com:99999x", "", ":80", "a:b",
     "a%zz", "a<b>", "a\\b"],
)
def test_malformed_host_ignored(value: str) -> None:
    env = applied(x_forwarded_host=value)
    assert env["HTTP_HOST"] == "backend:8000"
    assert env["SERVER_NAME"] == "127.0.0.1"


@pytest.mark.parametrize("value", ["0", "65536", "http", "-1", "80a", ""])
def test_malformed_port_ignored(value: str) -> None:
    env = applied(x_forwarded_port=value)
    assert (env["HTTP_HOST"], env["SERVER_PORT"]) == ("backend:8000", "8000")


def test_host_list_takes_rightmost() -> None:
    assert applied(x_forwarded_host="evil.example, example.com")["HTTP_HOST"] == "example.com"


def test_xff_alone_leaves_host_and_scheme() -> None:
    env = applied(x_forwarded_for="203.0.113.7")
    assert (env["HTTP_HOST"], env["SERVER_NAME"], env["SERVER_PORT"]) == (
        "backend:8000",
        "127.0.0.1",
        "8000",
    )
    assert env["wsgi.url_scheme"] == "http"


def test_unix_socket_environ_gets_a_real_location() -> None:
    # Over a Unix socket the server reports SERVER_NAME=localhost, SERVER_PORT=80.
    environ = make_environ(
        "", x_forwarded_proto="https", x_forwarded_host="example.com", x_forwarded_port="443"
    )
    environ.update(SERVER_NAME="localhost", SERVER_PORT="80", HTTP_HOST="example.com")
    apply_proxy_headers(environ, ProxyTrust([]))
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"], environ["wsgi.url_scheme"]) == (
        "example.com",
        "443",
        "https",
    )


def test_url_reconstruction_matches_client_url() -> None:
    """PEP 3333's reconstruction, both via HTTP_HOST and via SERVER_NAME/PORT."""
    from wsgiref.util import request_uri

    env = applied(
        x_forwarded_proto="https", x_forwarded_host="example.com", x_forwarded_port="8443"
    )
    env["SCRIPT_NAME"] = ""
    assert request_uri(env) == "https://example.com:8443/"
    del env["HTTP_HOST"]
    assert request_uri(env) == "https://example.com:8443/"


# --- RFC 7239 Forwarded ---------------------------------------------------------------------------


def test_forwarded_for_proto_host() -> None:
    env = applied(forwarded='for=203.0.113.7;proto=https;host="example.com"')
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("203.0.113.7", "0")
    assert env["wsgi.url_scheme"] == "https"
    assert (env["HTTP_HOST"], env["SERVER_NAME"], env["SERVER_PORT"]) == (
        "example.com",
        "example.com",
        "443",
    )


def test_forwarded_quoted_ipv6_with_port() -> None:
    env = applied(forwarded='for="[2001:db8:cafe::17]:4711"')
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("2001:db8:cafe::17", "4711")


def test_forwarded_quoted_ipv4_with_port_and_case_insensitive_keys() -> None:
    env = applied(forwarded='For="192.0.2.60:8080";Proto=HTTPS')
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("192.0.2.60", "8080")
    assert env["wsgi.url_scheme"] == "https"


def test_forwarded_obfuscated_port() -> None:
    env = applied(forwarded='for="192.0.2.60:_port"')
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("192.0.2.60", "0")


@pytest.mark.parametrize("node", ["_hidden", "unknown", '"_SEVKISEK"', '"unknown:80"'])
def test_forwarded_obfuscated_for_leaves_remote_addr(node: str) -> None:
    env = applied(forwarded=f"for={node};proto=https")
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == (NGINX, "50000")
    assert env["wsgi.url_scheme"] == "https"  # the rest of the element still applies


def test_forwarded_multiple_elements_walk_from_right() -> None:
    trust = ProxyTrust(["127.0.0.1", "10.0.0.0/8"])
    value = "for=6.6.6.6;proto=http, for=203.0.113.7;proto=https;host=example.com, for=10.0.0.2"
    env = applied(trust, forwarded=value)
    assert env["REMOTE_ADDR"] == "203.0.113.7"
    # proto/host of the element that saw the client, not the client-supplied first element.
    assert env["wsgi.url_scheme"] == "https"
    assert env["HTTP_HOST"] == "example.com"


def test_forwarded_proto_falls_back_to_later_trusted_hop() -> None:
    trust = ProxyTrust(["127.0.0.1", "10.0.0.0/8"])
    env = applied(trust, forwarded="for=203.0.113.7, for=10.0.0.2;proto=https")
    assert env["REMOTE_ADDR"] == "203.0.113.7"
    assert env["wsgi.url_scheme"] == "https"


def test_forwarded_client_prefix_is_not_believed() -> None:
    # Client sent "Forwarded: for=6.6.6.6;proto=https"; the proxy appended its own element.
    env = applied(forwarded="for=6.6.6.6;proto=https, for=203.0.113.7;proto=http")
    assert env["REMOTE_ADDR"] == "203.0.113.7"
    assert env["wsgi.url_scheme"] == "http"


def test_forwarded_all_trusted_takes_leftmost() -> None:
    trust = ProxyTrust(["127.0.0.1", "10.0.0.0/8"])
    assert applied(trust, forwarded="for=10.0.0.9, for=10.0.0.2")["REMOTE_ADDR"] == "10.0.0.9"


def test_forwarded_without_for() -> None:
    env = applied(forwarded='proto=https;host="example.com:8443"')
    assert env["REMOTE_ADDR"] == NGINX
    assert env["wsgi.url_scheme"] == "https"
    assert (env["HTTP_HOST"], env["SERVER_PORT"]) == ("example.com:8443", "8443")


def test_forwarded_by_and_unknown_parameters_ignored() -> None:
    env = applied(forwarded="for=203.0.113.7;by=10.0.0.1;secret=x;proto=https")
    assert env["REMOTE_ADDR"] == "203.0.113.7"
    assert env["wsgi.url_scheme"] == "https"


def test_forwarded_quoted_string_with_separators_and_escapes() -> None:
    env = applied(forwarded='for=203.0.113.7;ext="a;b,c\\"d";proto=https')
    assert env["REMOTE_ADDR"] == "203.0.113.7"
    assert env["wsgi.url_scheme"] == "https"


def test_forwarded_whitespace_tolerated() -> None:
    env = applied(forwarded=" for=203.0.113.7 ; proto=https , for=127.0.0.1 ")
    assert env["REMOTE_ADDR"] == "203.0.113.7"
    assert env["wsgi.url_scheme"] == "https"


@pytest.mark.parametrize(
    "value",
    [
        "for=1.2.3.4 proto=https",  # two pairs without a separator
        "for=1.2.3.4;for=5.6.7.8",  # repeated parameter within one element
        'for="1.2.3.4',  # unterminated quote
        "for",  # no value
        "=1.2.3.4",
        "for=1.2.3.4;proto=https\x00",
    ],
)
def test_forwarded_malformed_is_ignored_entirely(value: str) -> None:
    env = applied(forwarded=value)
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == (NGINX, "http")


def test_forwarded_bad_proto_ignored() -> None:
    env = applied(forwarded="for=203.0.113.7;proto=gopher")
    assert env["REMOTE_ADDR"] == "203.0.113.7"
    assert env["wsgi.url_scheme"] == "http"


# --- precedence between the two families ----------------------------------------------------------


def test_x_forwarded_wins_over_forwarded() -> None:
    # A stock nginx config sets X-Forwarded-* and passes a client's Forwarded header through.
    env = applied(
        forwarded='for=6.6.6.6;proto=https;host="evil.example"',
        x_forwarded_for="203.0.113.7",
        x_forwarded_proto="http",
    )
    assert env["REMOTE_ADDR"] == "203.0.113.7"
    assert env["wsgi.url_scheme"] == "http"
    assert env["HTTP_HOST"] == "backend:8000"


def test_families_never_mix() -> None:
    # Only X-Forwarded-Proto is present: Forwarded's for= must not fill in the address.
    env = applied(forwarded="for=6.6.6.6", x_forwarded_proto="https")
    assert env["REMOTE_ADDR"] == NGINX
    assert env["wsgi.url_scheme"] == "https"


def test_forwarded_used_when_no_x_forwarded_header() -> None:
    assert applied(forwarded="for=203.0.113.7")["REMOTE_ADDR"] == "203.0.113.7"
