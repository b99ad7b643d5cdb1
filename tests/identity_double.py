"""A test double of the Microsoft identity services a Teams bot talks to, over real TLS.

One HTTPS server, with a certificate from a `trustme` test CA (its PEM is `ca_file`), plays:

- the Bot Framework channel's OpenID metadata (`/v1/.well-known/openidconfiguration`) and its JWKS
  (`/v1/.well-known/keys`): one RSA key endorsed for `msteams`, one endorsed only for other channels;
- Microsoft Entra's OAuth2 client-credentials token endpoint (`/{tenant}/oauth2/v2.0/token`) and the
  `/{tenant}/v2.0/.well-known/openid-configuration` document token clients read;
- App Service's managed identity endpoint (`/msi/token`, what IDENTITY_ENDPOINT / IDENTITY_HEADER name).

It mints inbound channel tokens with its keys (`channel_token`), issues access tokens as Entra does (RS256
JWTs naming the audience, i.e. the requested scope without `/.default`, the tenant as `tid` and the client as
`appid`; `decode_access_token` checks one as a resource such as the Graph double does), records every request,
and can hold requests open (`hold`, until `release`) or fail them (`fail_next`).
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jwt
import trustme
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ENDORSED_KID = "endorsed-key"
UNENDORSED_KID = "unendorsed-key"
UNPUBLISHED_KID = "unpublished-key"
ROLLED_KID = "rolled-key"
ACCESS_KID = "access-token-key"  # signs the access tokens the token endpoint issues
ROUTES = ("metadata", "keys", "token", "token_discovery", "msi")


@cache
def rsa_key(kid: str) -> rsa.RSAPrivateKey:
    """One test RSA key per key id, generated once per test run."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(kid: str, endorsements: list[str]) -> dict[str, Any]:
    entry: dict[str, Any] = RSAAlgorithm.to_jwk(rsa_key(kid).public_key(), as_dict=True)
    entry.update(kid=kid, use="sig", endorsements=endorsements)
    return entry


@dataclass
class IdentityRequest:
    route: str
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    headers: dict[str, str]
    status: int | None = None


@dataclass
class _Fault:
    route: str
    status: int
    body: dict[str, Any]
    remaining: int | None


@dataclass
class IdentityDouble:
    """See the module docstring. Use as `async with IdentityDouble(tmp_path) as identity:`."""

    directory: Path
    clients: dict[str, str] = field(default_factory=dict)  # app id → client secret
    msi_header: str = "identity-header-secret"
    msi_tenant: str = "11111111-1111-4111-8111-111111111111"  # the managed identity's home tenant
    token_lifetime_s: int = 3600
    published: list[dict[str, Any]] = field(default_factory=lambda: [
        jwk(ENDORSED_KID, ["msteams", "skype"]), jwk(UNENDORSED_KID, ["webchat", "directline"]),
    ])

    def __post_init__(self) -> None:
        self.ca = trustme.CA()
        self.ca_file = str(self.directory / "identity-ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.url = ""
        self.requests: list[IdentityRequest] = []
        self.counts: Counter[str] = Counter()
        self.issued: list[str] = []  # access tokens handed out, oldest first
        self._ids = itertools.count(1)
        self._held_routes: set[str] = set()
        self._release = asyncio.Event()
        self.held_count = 0
        self._faults: list[_Fault] = []
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # ---- addresses -------------------------------------------------------------------------------

    @property
    def metadata_url(self) -> str:
        return f"{self.url}v1/.well-known/openidconfiguration"

    def login_url(self, tenant: str = "botframework.com") -> str:
        return f"{self.url}{tenant}"

    @property
    def msi_endpoint(self) -> str:
        return f"{self.url}msi/token"

    # ---- inbound tokens --------------------------------------------------------------------------

    def channel_token(self, *, issuer: str, audience: str, service_url: str, kid: str = ENDORSED_KID,
                      expires_in: float = 3600, alg: str = "RS256", **claims: Any) -> str:
        """A JWT as the Bot Framework channel signs it (alg "none" gives an unsigned one)."""
        now = int(time.time())
        payload = {"iss": issuer, "aud": audience, "serviceurl": service_url, "nbf": now - 60,
                   "iat": now - 60, "exp": int(now + expires_in), **claims}
        if alg == "none":
            return jwt.encode(payload, None, algorithm="none", headers={"kid": kid})
        return jwt.encode(payload, rsa_key(kid), algorithm=alg, headers={"kid": kid})

    def rotate(self) -> None:
        """Publish one more endorsed key (a key rollover)."""
        self.published.append(jwk(ROLLED_KID, ["msteams"]))

    # ---- switches --------------------------------------------------------------------------------

    def hold(self, *routes: str) -> None:
        """Hold requests to these routes open until `release()` (a hanging service)."""
        unknown = set(routes) - set(ROUTES)
        if unknown:
            raise ValueError(f"unknown routes {sorted(unknown)}")
        self._held_routes.update(routes)

    def release(self) -> None:
        self._held_routes.clear()
        self._release.set()
        self._release = asyncio.Event()

    def fail_next(self, route: str, status: int, count: int | None = 1, error: str = "temporarily_unavailable",
                  description: str = "scripted failure") -> None:
        self._faults.append(_Fault(route, status, {"error": error, "error_description": description}, count))

    def clear_faults(self) -> None:
        self._faults.clear()

    def find(self, route: str) -> list[IdentityRequest]:
        return [r for r in self.requests if r.route == route]

    async def wait_for(self, predicate: Callable[[IdentityDouble], bool], timeout: float = 10.0) -> None:
        """Wait (event-driven) until `predicate(self)` holds; `timeout` only guards against a hang."""
        async def watch() -> None:
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(watch(), timeout)

    # ---- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> IdentityDouble:
        app = web.Application()
        app.router.add_get("/v1/.well-known/openidconfiguration", self._route("metadata", self._metadata))
        app.router.add_get("/v1/.well-known/keys", self._route("keys", self._keys))
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._route("token", self._token))
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration",
                           self._route("token_discovery", self._discovery))
        app.router.add_get("/msi/token", self._route("msi", self._msi))
        server_context = self.server_context()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=server_context)
        await site.start()
        self.url = f"https://127.0.0.1:{self._runner.addresses[0][1]}/"
        return self

    def server_context(self) -> ssl.SSLContext:
        """A server TLS context with a certificate of the test CA for 127.0.0.1, localhost and the test-only
        names under example.test (what the proxy tests reach the doubles by); other doubles use it too."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost", "*.example.test").configure_cert(context)
        return context

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- handlers --------------------------------------------------------------------------------

    def _route(self, route: str, handler: Callable[[IdentityRequest, web.Request], Any]) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            form = {k: str(v) for k, v in (await request.post()).items()} if request.method == "POST" else {}
            record = IdentityRequest(route, request.method, request.path, dict(request.query), form,
                                     dict(request.headers))
            self.requests.append(record)
            self.counts[route] += 1
            self._changed.set()
            if route in self._held_routes:
                release = self._release
                self.held_count += 1
                self._changed.set()
                try:
                    await asyncio.wait_for(release.wait(), 30.0)
                except TimeoutError:
                    pass
                finally:
                    self.held_count -= 1
            response = self._fault(route) or await handler(record, request)
            record.status = response.status
            self._changed.set()
            return response

        return handle

    def _fault(self, route: str) -> web.Response | None:
        for fault in self._faults:
            if fault.route == route:
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                return web.json_response(fault.body, status=fault.status)
        return None

    async def _metadata(self, record: IdentityRequest, request: web.Request) -> web.Response:
        return web.json_response({
            "issuer": "https://api.botframework.com", "authorization_endpoint": "https://invalid.botframework.com",
            "jwks_uri": f"{self.url}v1/.well-known/keys", "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        })

    async def _keys(self, record: IdentityRequest, request: web.Request) -> web.Response:
        return web.json_response({"keys": self.published})

    def _issue(self, tenant: str, audience: str, client_id: str) -> str:
        now = int(time.time())
        token = jwt.encode({"aud": audience, "iss": f"{self.url}{tenant}/v2.0", "tid": tenant, "appid": client_id,
                            "iat": now, "nbf": now, "exp": now + self.token_lifetime_s, "uti": str(next(self._ids))},
                           rsa_key(ACCESS_KID), algorithm="RS256", headers={"kid": ACCESS_KID})
        self.issued.append(token)
        return token

    def decode_access_token(self, token: str, audience: str) -> dict[str, Any]:
        """The claims of a token this double issued, checked as a resource checks them (signature, expiry,
        audience); raises jwt.InvalidTokenError otherwise."""
        claims: dict[str, Any] = jwt.decode(token, rsa_key(ACCESS_KID).public_key(), algorithms=["RS256"],
                                            audience=audience)
        return claims

    async def _token(self, record: IdentityRequest, request: web.Request) -> web.Response:
        form = record.form
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if self.clients.get(form.get("client_id", "")) != form.get("client_secret") or not form.get("client_secret"):
            return web.json_response({"error": "invalid_client",
                                      "error_description": "AADSTS7000215: Invalid client secret provided."},
                                     status=401)
        scope = form.get("scope", "")
        audience = scope.removesuffix("/.default") if scope.endswith("/.default") else scope
        token = self._issue(request.match_info["tenant"], audience, form["client_id"])
        return web.json_response({"token_type": "Bearer", "expires_in": self.token_lifetime_s,
                                  "ext_expires_in": self.token_lifetime_s, "access_token": token})

    async def _discovery(self, record: IdentityRequest, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        return web.json_response({
            "issuer": f"{self.url}{tenant}/v2.0", "token_endpoint": f"{self.url}{tenant}/oauth2/v2.0/token",
            "authorization_endpoint": f"{self.url}{tenant}/oauth2/v2.0/authorize",
            "jwks_uri": f"{self.url}{tenant}/discovery/v2.0/keys",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
        })

    async def _msi(self, record: IdentityRequest, request: web.Request) -> web.Response:
        if record.headers.get("X-IDENTITY-HEADER") != self.msi_header:
            return web.json_response({"error": "unauthorized", "error_description": "bad identity header"},
                                     status=401)
        if record.query.get("client_id") not in self.clients:
            return web.json_response({"error": "invalid_request", "error_description": "unknown identity"},
                                     status=400)
        return web.json_response({
            "access_token": self._issue(self.msi_tenant, record.query.get("resource", "").rstrip("/"),
                                        record.query["client_id"]),
            "expires_on": str(int(time.time()) + self.token_lifetime_s),
            "resource": record.query.get("resource", ""), "token_type": "Bearer",
            "client_id": record.query["client_id"],
        })
