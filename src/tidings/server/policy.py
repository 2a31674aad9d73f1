"""Where requests may come from: the gate every request and stream passes once its
principal is known.

* Anonymous requests act with every permission on a loopback server. Without a check,
  any website the user visits could use that server (its requests carry an Origin), and a
  DNS name rebound to 127.0.0.1 would pass the same-origin test (its Host is that name).
  So an anonymous request from a web page of another origin is refused, and so, on a
  loopback server, is one naming a host that is not loopback nor in `--allowed-hosts`.
  Clients that are not browsers send no Origin and are not affected.
* A loopback server is anonymous because only this host reaches it; a request that a
  reverse proxy forwarded (X-Forwarded-For, Forwarded, X-Real-IP) may come from anywhere,
  so an anonymous one is refused unless `--allow-anonymous` says the proxy's clients are
  trusted. Proxies that add none of these headers are not caught: docs/deploy.md says to
  run a proxied server with `--require-auth`.
* A browser sends a session cookie with any page's request: a cookie-authenticated
  request that changes state, and every cookie-authenticated socket, must come from this
  server's origin or an allowed CORS origin (CSRF, CSWSH). Bearer tokens are not sent by
  browsers on their own, so they need no such check.
"""

from __future__ import annotations

import functools
import ipaddress

from starlette.types import Scope

from tidings.protocol.errors import Forbidden, Unauthorized
from tidings.server.principals import Principal
from tidings.server.settings import Settings

__all__ = ["PUBLIC_PATHS", "AccessPolicy", "loopback_host"]

# Endpoints anyone may call, whatever --require-auth says (route templates): the index,
# health, the API's description and its page's files, the JavaScript client, the console's
# page and files (it asks for a login itself), login, and the files of --static (an
# application's page must load before its user logs in).
PUBLIC_PATHS = frozenset(
    {
        "/",
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/docs",
        "/docs/{asset}",
        "/client/{asset}",
        "/console",
        "/console/{asset}",
        "/v1/auth/login",
        "/static",
        "/static/{path:path}",
    }
)

# Methods that change nothing: a cookie may authenticate them from any page.
_SAFE_METHODS = ("GET", "HEAD")

# Headers a reverse proxy adds to what it forwards (lower case, as ASGI gives them).
_FORWARDED = frozenset({b"x-forwarded-for", b"forwarded", b"x-real-ip"})


@functools.lru_cache(maxsize=256)  # asked on every anonymous request; hosts are few
def loopback_host(host: str) -> bool:
    """True for a Host header naming loopback: localhost, 127.x.y.z or [::1], any port."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class AccessPolicy:
    """The host and origin rules of one server.

    Args:
        settings: `loopback` (the bound address), `hosts` (`--allowed-hosts`) and
            `origins` (`--cors-origins`).
    """

    __slots__ = ("hosts", "loopback", "origins", "trust_forwarded")

    def __init__(self, settings: Settings) -> None:
        # Asked on every anonymous request: read from the settings once.
        self.loopback = settings.loopback
        self.trust_forwarded = settings.allow_anonymous
        self.hosts = settings.hosts
        self.origins = settings.origins

    def admit(self, scope: Scope, principal: Principal) -> None:
        """Forbidden unless `principal` may act through this request or socket from where
        it comes (the module docstring says why)."""
        if principal.via_cookie and (
            scope["type"] == "websocket" or scope["method"] not in _SAFE_METHODS
        ):
            self.check_origin(scope)
        elif principal.session is None:
            self.check_anonymous(scope)

    def check_anonymous(self, scope: Scope) -> None:
        """Forbidden for an anonymous request from a web page of another origin, or (on a
        loopback server) one that names a host other than loopback or an allowed one;
        Unauthorized for one a proxy forwarded to a loopback server (module docstring)."""
        origin = host = None
        forwarded = False
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
            elif name == b"host":
                host = value.decode("latin-1")
            elif name in _FORWARDED:
                forwarded = True
        if forwarded and self.loopback and not self.trust_forwarded:
            raise Unauthorized(
                "this loopback server serves anonymous clients of this host only, and the "
                "request came through a proxy: authenticate (serve with --require-auth and "
                "send a token), or start the server with --allow-anonymous if every client "
                "of the proxy may act anonymously"
            )
        if self.loopback and host is not None and not loopback_host(host):
            allowed = self.hosts
            name = host.rsplit(":", 1)[0].lower() if not host.endswith("]") else host
            if "*" not in allowed and name not in allowed:
                raise Forbidden(
                    f"Host {host!r} is not this loopback server's: connect to 127.0.0.1 or "
                    "localhost, authenticate, or list the name in --allowed-hosts"
                )
        if origin is not None:
            self.check_origin(scope)

    def check_origin(self, scope: Scope) -> None:
        """Forbidden unless the request's Origin is this server or an allowed CORS origin."""
        origin = host = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value.decode("latin-1").rstrip("/")
            elif name == b"host":
                host = value.decode("latin-1")
        if origin is None:
            raise Forbidden("a cookie-authenticated request must carry an Origin header")
        scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
        if origin in self.origins or (host is not None and origin == f"{scheme}://{host}"):
            return
        raise Forbidden(f"origin {origin!r} may not use this session: add it to --cors-origins")
