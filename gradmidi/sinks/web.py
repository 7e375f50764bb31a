"""The browser's side of ``serve=``: HTTP requests on the stream's own port (stdlib only).

A connection whose first bytes are ``GET `` is a browser. It gets the run's live page, the
page's scripts (gradmidi/page/, with the SoundFont synthesiser vendored in it), gradmidi's own
SoundFont, or, at ``/stream``, a WebSocket that carries the same JSON messages as the TCP stream.
One request per connection (``Connection: close``): the page loads a handful of files once.

Who may ask: with a token (serving beyond loopback) every request but the token form needs it,
in the URL (``?token=``) or in the cookie set when the URL gave it, so nothing of the run, not
even the page, is sent before the token is checked. On loopback, where no token exists, the
``Host`` must be a loopback name or an address (no DNS rebinding). A WebSocket's ``Origin`` must
always be the page's own: no other site's script may open the stream in the user's browser.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib.resources import files
from urllib.parse import parse_qs, unquote, urlsplit

from .. import websocket
from ..fonts import bundled_soundfont

MAX_REQUEST = 16 << 10  # request line and headers; a browser sends about 1 KiB
STREAM_PATH = "/stream"
SOUNDFONT_PATH = "/soundfont.sf2"

_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".sf2": "application/octet-stream"}
_ASSETS = ("page.js", "page.css", "vendor/spessasynth_lib.js", "vendor/spessasynth_core.js", "vendor/stb_vorbis.js",
           "vendor/spessasynth_processor.min.js", "vendor/LICENSE")
_IMPORT_MAP = re.compile(rb'<script type="importmap">(.*?)</script>', re.S)
_STATUS = {200: "OK", 101: "Switching Protocols", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed"}


class HTTPError(Exception):
    """A request we answer with an error status and hang up."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Request:
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case

    def cookie(self, name: str) -> str | None:
        for part in self.headers.get("cookie", "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return unquote(value)
        return None

    @property
    def wants_websocket(self) -> bool:
        return "websocket" in self.headers.get("upgrade", "").lower()


def parse_request(data: bytes) -> Request | None:
    """A complete GET request's path, query and headers; None while its headers are incomplete."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_REQUEST:
            raise HTTPError(400, "request headers too long")
        return None
    try:
        lines = data[:end].decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise HTTPError(400, "not an HTTP request line") from None
    if method != "GET" or not version.startswith("HTTP/1."):
        raise HTTPError(405, "only GET over HTTP/1.x")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise HTTPError(400, "a malformed header")
        headers[name.strip().lower()] = value.strip()
    url = urlsplit(target)
    query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
    return Request(path=url.path or "/", query=query, headers=headers)


def cookie_name(port: int) -> str:
    return f"gradmidi-token-{port}"  # one per port: two runs on one host keep their own tokens


def token_given(request: Request, port: int) -> str | None:
    return request.query.get("token") or request.cookie(cookie_name(port))


def token_matches(given: str | None, token: str) -> bool:
    return bool(given) and hmac.compare_digest(str(given).encode(), token.encode())


def loopback_host(request: Request) -> bool:
    """The Host names this machine's loopback or an address literal (a rebinding name cannot pass)."""
    host = urlsplit(f"//{request.headers.get('host', '')}").hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower()


# -- responses ------------------------------------------------------------------------------
def response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8", *,
             headers: dict[str, str] | None = None, gzipped: bool = False) -> bytes:
    head = {
        "Content-Type": content_type, "Content-Length": str(len(body)), "Connection": "close",
        "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
        "Cross-Origin-Resource-Policy": "same-origin",
    }
    if gzipped:
        head["Content-Encoding"] = "gzip"
    head.update(headers or {})
    lines = [f"HTTP/1.1 {status} {_STATUS.get(status, 'Error')}", *(f"{k}: {v}" for k, v in head.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def error(status: int, reason: str) -> bytes:
    return response(status, f"gradmidi: {reason}\n".encode())


def upgrade(request: Request) -> bytes:
    """The 101 answer that turns this connection into a WebSocket."""
    key = request.headers.get("sec-websocket-key")
    if not key or request.headers.get("sec-websocket-version") != "13":
        raise HTTPError(400, "a WebSocket request needs Sec-WebSocket-Key and version 13")
    return ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {websocket.accept_key(key)}\r\n\r\n").encode("latin-1")


def asset(request: Request, *, set_cookie: str | None = None) -> bytes:
    """The page, one of its files or the SoundFont; 404 for anything else."""
    path = request.path
    if path in ("/", "/index.html"):
        body, csp = _page()
        extra = {"Content-Security-Policy": csp}
        if set_cookie:
            extra["Set-Cookie"] = set_cookie
        return _send(request, body, _TYPES[".html"], extra)
    if path == SOUNDFONT_PATH:
        return _send(request, _soundfont(), _TYPES[".sf2"], {"Cache-Control": "private, max-age=3600"})
    name = path.lstrip("/")
    if name not in _ASSETS:
        raise HTTPError(404, f"no {path} here")
    content_type = _TYPES.get(name[name.rfind("."):], "text/plain; charset=utf-8")
    return _send(request, _asset(name), content_type, {})


def token_form(wrong: bool) -> bytes:
    """The only thing served without the token: a form that asks for it (nothing of the run)."""
    said = "<p>That token is not this run's.</p>" if wrong else ""
    body = ("<!doctype html><meta charset=utf-8><title>gradmidi: token</title>"
            "<body style='font-family: sans-serif; margin: 3em'><h1>gradmidi</h1>"
            f"<p>This run serves beyond loopback: give its token (shown where it started).</p>{said}"
            "<form method=get action='/'><input id=token name=token type=password autofocus "
            "placeholder=token size=30> <button type=submit>open</button></form>").encode()
    return response(403 if wrong else 401, body, _TYPES[".html"],
                    headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                             "form-action 'self'"})


def _send(request: Request, body: bytes, content_type: str, headers: dict[str, str]) -> bytes:
    if "gzip" in request.headers.get("accept-encoding", "") and content_type.startswith("text/"):
        return response(200, _gzip(body), content_type, headers=headers, gzipped=True)
    return response(200, body, content_type, headers=headers)


@cache
def _asset(name: str) -> bytes:
    return (files("gradmidi") / "page" / name).read_bytes()


@cache
def _gzip(body: bytes) -> bytes:
    return gzip.compress(body, compresslevel=6, mtime=0)


@lru_cache(maxsize=1)
def _soundfont() -> bytes:
    return bundled_soundfont().read_bytes()


@lru_cache(maxsize=1)
def _page() -> tuple[bytes, str]:
    """index.html and its Content-Security-Policy: every load from this address only (the inline
    import map allowed by its hash; WebAssembly for the synthesiser's Vorbis decoder)."""
    body = _asset("index.html")
    found = _IMPORT_MAP.search(body)
    allowed = ""
    if found:
        allowed = " 'sha256-" + base64.b64encode(hashlib.sha256(found.group(1)).digest()).decode() + "'"
    csp = (f"default-src 'self'; script-src 'self' 'wasm-unsafe-eval'{allowed}; style-src 'self'; "
           "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors *")
    return body, csp
