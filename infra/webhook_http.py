"""One webhook attempt against a hostile URL: checked, pinned, bounded, never redirected.

A tenant chooses the URL, and the worker, inside the deployment's network, sends to it. So:
- only `http` and `https`, no credentials in the URL, at most 2000 characters;
- the host is resolved once, and with `ROBAUDIT_WEBHOOK_BLOCK_PRIVATE` (the default) every
  address it resolves to must be public (no loopback, private, link-local, multicast or
  reserved range); the connection then goes to that checked address (with the URL's host as
  `Host` and TLS server name), so a second lookup cannot rebind it to an internal one;
- no proxy from the environment, no redirects (a 3xx is a failed attempt);
- `ROBAUDIT_WEBHOOK_TIMEOUT_S` bounds each phase and the whole attempt, and at most
  MAX_ANSWER_BYTES of the answer are read (a snippet is kept for the delivery log).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

MAX_URL_CHARS = 2000
MAX_ANSWER_BYTES = 64 * 1024
SNIPPET_CHARS = 200
USER_AGENT = "robaudit-webhooks/1"


class RefusedUrl(ValueError):
    """The URL may not be sent to; the message says why."""


@dataclass(frozen=True)
class Attempt:
    status_code: int | None  # None: no answer (refused, unreachable, timed out)
    error: str | None  # None: a 2xx answer
    started_at: float
    finished_at: float

    @property
    def ok(self) -> bool:
        return self.error is None


def check_url(url: str) -> str:
    """The URL as given, if it has a form we send to; else RefusedUrl saying what to fix."""
    if len(url) > MAX_URL_CHARS:
        raise RefusedUrl(f"the URL has {len(url)} characters; at most {MAX_URL_CHARS}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RefusedUrl(f"the URL does not parse: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise RefusedUrl(f"the URL's scheme must be http or https, not {parts.scheme!r}")
    if not parts.hostname:
        raise RefusedUrl("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise RefusedUrl("the URL may not carry credentials; verify the signature instead")
    if port == 0:
        raise RefusedUrl("the URL's port must be 1 to 65535")
    return url


def resolve(host: str, port: int, *, block_private: bool) -> str:
    """The address to connect to; RefusedUrl if any address of the host is not public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise RefusedUrl(f"{host} does not resolve: {exc}") from None
    addresses = [_address(str(info[4][0]).split("%")[0]) for info in infos]
    if block_private:
        for address in addresses:
            if not _public(address):
                raise RefusedUrl(
                    f"{host} resolves to {address}, which is not a public address ({_SETTING})"
                )
    return str(addresses[0])


def check_literal_host(url: str) -> None:
    """Refuse, without a DNS lookup, a URL whose host is a non-public IP literal or
    `localhost`: what `resolve` would refuse at every attempt, said once, when the endpoint
    is created. Names are looked up only when sending, from the worker's network."""
    host = (urlsplit(url).hostname or "").rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        raise RefusedUrl(f"{host} is this machine, not a public address ({_SETTING})")
    try:
        address = _address(host)
    except ValueError:
        return
    if not _public(address):
        raise RefusedUrl(f"{host} is not a public address ({_SETTING})")


_SETTING = "ROBAUDIT_WEBHOOK_BLOCK_PRIVATE"


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IP address, an IPv4-mapped IPv6 one as the IPv4 it is (::ffff:10.0.0.7 is private)."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return address.is_global and not address.is_multicast


def post(
    url: str, body: bytes, headers: dict[str, str], *, timeout_s: float, block_private: bool
) -> Attempt:
    """POST `body` once; the outcome, never an exception."""
    started = time.time()
    try:
        code, error = _post(url, body, headers, timeout_s, block_private)
    except RefusedUrl as exc:
        code, error = None, f"refused: {exc}"
    except httpx.TimeoutException:
        code, error = None, f"no answer within {timeout_s:g} s"
    except httpx.HTTPError as exc:
        code, error = None, f"{type(exc).__name__}: {exc}"[:SNIPPET_CHARS]
    return Attempt(code, error, started, time.time())


def _post(
    url: str, body: bytes, headers: dict[str, str], timeout_s: float, block_private: bool
) -> tuple[int | None, str | None]:
    parts = urlsplit(check_url(url))
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = resolve(host, port, block_private=block_private)
    pinned = httpx.URL(url).copy_with(host=address)
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    if ":" in host:  # an IPv6 literal
        netloc = f"[{host}]" if parts.port is None else f"[{host}]:{parts.port}"
    deadline = time.monotonic() + timeout_s
    with httpx.Client(
        timeout=httpx.Timeout(timeout_s), follow_redirects=False, trust_env=False
    ) as http:
        request = http.build_request(
            "POST",
            pinned,
            content=body,
            headers={**headers, "Host": netloc, "User-Agent": USER_AGENT},
            extensions={"sni_hostname": host} if parts.scheme == "https" else {},
        )
        response = http.send(request, stream=True)
        try:
            snippet = _read_bounded(response, deadline, timeout_s)
        finally:
            response.close()
    code = response.status_code
    if 200 <= code < 300:
        return code, None
    if 300 <= code < 400:
        return code, f"redirect to {response.headers.get('location', '?')!r} not followed"
    return code, f"HTTP {code}: {snippet}" if snippet else f"HTTP {code}"


def _read_bounded(response: httpx.Response, deadline: float, timeout_s: float) -> str:
    """Up to MAX_ANSWER_BYTES of the answer, before the attempt's deadline."""
    read = bytearray()
    for chunk in response.iter_raw():
        read += chunk
        if len(read) >= MAX_ANSWER_BYTES:
            break
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout(f"the answer took over {timeout_s:g} s")
    return read[:SNIPPET_CHARS].decode("utf-8", "replace").strip()
