"""Request → PEP 3333 environ, without any I/O.

The per-connection part (addresses, constants) is built once per connection by
``connection_environ``; ``request_environ`` copies it (a C-level ``dict`` copy) and adds what one
request carries. Header names are mapped to ``HTTP_*`` keys through a small cache, because the
same few dozen names arrive on every request.
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import unquote_to_bytes

from h11 import Request

from . import __version__
from .filewrapper import FileWrapper
from .strict import SINGLETON_KEYS, Refused, Rejection, check_target

SERVER_SOFTWARE = f"wsgiloop/{__version__}"

# Header names that do not become HTTP_* keys (by their lowercase form); None drops the header.
_SPECIAL_KEYS: dict[bytes, str | None] = {
    b"content-type": "CONTENT_TYPE",
    b"content-length": "CONTENT_LENGTH",
    # Hop-by-hop framing is the server's business; apps see wsgi.input_terminated instead.
    b"transfer-encoding": None,
}
_PROTOCOLS: dict[bytes, str] = {b"1.1": "HTTP/1.1", b"1.0": "HTTP/1.0"}
# Header name, as the client spelled it → environ key.
_KEY_CACHE: dict[bytes, str | None] = {}
_KEY_CACHE_MAX = 512


def _environ_key(name: bytes) -> str | None:
    key = _KEY_CACHE.get(name, "")
    if key != "":
        return key
    lower = name.lower()
    if lower in _SPECIAL_KEYS:
        computed = _SPECIAL_KEYS[lower]
    elif b"_" in name:
        # Underscores are dropped: "X-Auth_User" and "X-Auth-User" would collide as
        # HTTP_X_AUTH_USER, which a client can use to spoof a header a proxy set (gunicorn,
        # nginx and Apache agree).
        computed = None
    else:
        computed = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
    if len(_KEY_CACHE) < _KEY_CACHE_MAX:
        _KEY_CACHE[name] = computed
    return computed


#: The keys request_environ sets on every request (HTTP_* and the CONTENT_* aside).
_PER_REQUEST = (
    "REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "RAW_URI", "SERVER_PROTOCOL", "wsgi.input"
)


def connection_environ(
    *,
    server: tuple[str, int] | None,
    peer: tuple[str, int] | None,
    url_scheme: str,
    script_name: str,
    multiprocess: bool,
    errors: Any = None,
) -> dict[str, Any]:
    """The keys that stay the same for every request on one connection.

    ``server``/``peer`` are ``None`` on a Unix socket: REMOTE_ADDR is then empty (the proxy in
    front knows the client, see ``proxy``) and SERVER_NAME/PORT fall back to localhost.
    REMOTE_HOST is REMOTE_ADDR: CGI (RFC 3875 4.1.9) says a server SHOULD set it and MAY put
    the address there when the name is not available; a reverse DNS lookup per connection would
    cost a round trip and prove nothing (the client controls its PTR record).
    """
    if server is None:
        server_name, server_port = "localhost", "443" if url_scheme == "https" else "80"
    else:
        server_name, server_port = server[0], str(server[1])
    return {
        "SERVER_NAME": server_name,
        "SERVER_PORT": server_port,
        "REMOTE_ADDR": peer[0] if peer else "",
        "REMOTE_HOST": peer[0] if peer else "",
        "REMOTE_PORT": str(peer[1]) if peer else "",
        "SCRIPT_NAME": script_name,
        "SERVER_SOFTWARE": SERVER_SOFTWARE,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": url_scheme,
        "wsgi.errors": errors if errors is not None else sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        # The optional PEP 3333 extension; wsgi recognises the wrapper to use os.sendfile.
        "wsgi.file_wrapper": FileWrapper,
        # Placeholders that request_environ always overwrites: its copy of this dict then has
        # room for them, where inserting them would make the copy resize (every request).
        **dict.fromkeys(_PER_REQUEST, ""),
    }


def _authority_end(target: bytes) -> int:
    """Where the authority of an absolute-form target ends, or -1 for any other form."""
    if target[:1] == b"/" or not (
        target[:7].lower() == b"http://" or target[:8].lower() == b"https://"
    ):
        return -1  # origin-form; asterisk-form ("OPTIONS *") and the rest are the app's to judge
    start = target.find(b"//") + 2
    end = len(target)
    for sep in b"/?":  # "http://host?q" is valid: the path is empty, the query is not
        i = target.find(sep, start)
        if i != -1 and i < end:
            end = i
    return end


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """Split a request target into (path, query), accepting the absolute form too."""
    end = _authority_end(target)
    if end != -1:
        # absolute-form (RFC 9112 3.2.2): keep only the path and query.
        target = target[end:]
        if target[:1] != b"/":
            target = b"/" + target
    path, _, query = target.partition(b"?")
    return path, query


def decode_path(path: bytes) -> str:
    """Percent-decode the path to bytes, then to a native string through latin-1 (PEP 3333)."""
    if b"%" in path:
        path = unquote_to_bytes(path)
    return path.decode("latin-1")


def request_environ(
    base: dict[str, Any],
    request: Request,
    wsgi_input: Any,
    script_name: str,
    fields: list[tuple[bytes, bytes]] | None = None,
    peer: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The full environ for one parsed request; raises ``strict.Refused`` for a request the app
    must not see.

    ``fields`` is ``request.headers.raw_items()`` when the caller has it already (a plain list
    walks several times faster than h11's ``Headers`` sequence). ``peer`` (REMOTE_ADDR and
    REMOTE_PORT) replaces the base's, when the base is shared by several connections.

    Refused (400): a target in none of the request-target forms, or an absolute-form one whose
    authority is invalid (``strict.check_target``); a field of ``strict.SINGLETON_KEYS`` repeated
    with another value. Other repeated fields are joined with "," (RFC 9110 5.3), Cookie with
    "; " (RFC 6265 5.4). A ``#fragment`` (which no request-target may hold: RFC 9112 3.2) is
    dropped from PATH_INFO and QUERY_STRING and kept in RAW_URI, as nginx, which routes on the
    part before the "#", hands the request on. ``OPTIONS *`` gets PATH_INFO "" (the request is
    about the server, not a resource; CGI allows an empty PATH_INFO, never one without a
    leading "/") and RAW_URI "*".
    """
    environ = base.copy()
    if peer is not None:
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = peer
        environ["REMOTE_HOST"] = peer[0]
    raw_target = target = request.target
    if b"#" in target:
        target = target[: target.index(b"#")]
    if target[:1] == b"/":  # origin-form, all but always
        raw_path, _, query = target.partition(b"?")
        end = -1
    else:
        rejection = check_target(request.method, raw_target)
        if rejection is not None:
            raise Refused(rejection)
        if target == b"*":  # asterisk-form: OPTIONS only (check_target)
            raw_path = query = b""
            end = -1
        else:
            raw_path, query = split_target(target)
            end = _authority_end(target)
    path = decode_path(raw_path)
    if script_name and (path == script_name or path.startswith(script_name + "/")):
        path = path[len(script_name) :]
    environ["REQUEST_METHOD"] = request.method.decode("ascii")
    environ["PATH_INFO"] = path
    environ["QUERY_STRING"] = query.decode("latin-1")
    environ["RAW_URI"] = raw_target.decode("latin-1")
    version = request.http_version
    environ["SERVER_PROTOCOL"] = _PROTOCOLS.get(version) or "HTTP/" + version.decode("ascii")
    environ["wsgi.input"] = wsgi_input
    get_key = _environ_key
    for name, value in request.headers.raw_items() if fields is None else fields:
        key = get_key(name)
        if key is None:
            continue
        text = value.decode("latin-1")
        if key in environ:
            if key == "HTTP_COOKIE":
                # RFC 6265 5.4: several Cookie fields are one list joined with "; ".
                text = environ[key] + "; " + text
            elif key in SINGLETON_KEYS:
                if text != environ[key]:
                    field = name.decode("latin-1")
                    raise Refused(Rejection(400, f"conflicting values of {field}"))
                continue
            elif key[0] == "H":
                text = environ[key] + "," + text
            # CONTENT_LENGTH repeated: h11 already rejected conflicting lengths.
        environ[key] = text
    if end != -1:
        # RFC 9112 3.2.2: with an absolute-form target the server MUST ignore Host and use the
        # target's authority (valid and without userinfo: check_target), so apps that route or
        # validate by HTTP_HOST see the same host.
        environ["HTTP_HOST"] = target[target.find(b"//") + 2 : end].decode("latin-1")
    return environ
