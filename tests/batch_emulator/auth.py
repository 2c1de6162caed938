"""Request authentication: Batch SharedKey signatures, and bearer tokens over TLS.

The SharedKey string-to-sign is rebuilt from the request exactly as it arrived (method, the
eleven standard headers, the sorted ``ocp-*`` headers, ``/account`` + the encoded path, and
the sorted query parameters with their first non-empty value), then compared in constant
time with the HMAC-SHA256 the client sent. Any mismatch is the service's 403
AuthenticationFailed, so a wrong key fails here the way it fails against Azure.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from email.utils import parsedate_to_datetime
from typing import Callable, Mapping
from urllib.parse import parse_qs

from .errors import BatchServiceError

SIGNED_HEADERS = (
    "content-encoding", "content-language", "content-length", "content-md5", "content-type", "date",
    "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range",
)
MAX_CLOCK_SKEW = dt.timedelta(minutes=15)


def string_to_sign(method: str, raw_path: str, raw_query: str, headers: Mapping[str, str], account: str) -> str:
    """The canonical string a SharedKey signature covers, built from the request as received."""
    lower = {k.lower(): v for k, v in headers.items() if v}
    if method not in ("GET", "HEAD") and "content-length" not in lower:
        lower["content-length"] = "0"
    out = method + "\n" + "\n".join(str(lower.get(h, "")) for h in SIGNED_HEADERS) + "\n"
    ocp = sorted((k, v) for k, v in lower.items() if "ocp-" in k)
    for name, value in ocp:
        out += f"{name}:{value}\n"
    out += f"/{account}{raw_path}"
    query = parse_qs(raw_query, keep_blank_values=True)
    for name in sorted(query):
        value = query[name][0]
        if value:
            out += f"\n{name}:{value}"
    return out


def sign(key_b64: str, text: str) -> str:
    digest = hmac.new(base64.b64decode(key_b64), text.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def _auth_failed(detail: str) -> BatchServiceError:
    return BatchServiceError(
        403, "AuthenticationFailed",
        "Server failed to authenticate the request. Make sure the value of Authorization header is "
        "formed correctly including the signature.",
        [("AuthenticationErrorDetail", detail)])


class Authenticator:
    """Checks the Authorization header of each request.

    ``token_validator`` decides whether a bearer token is acceptable (default: any non-empty
    token); bearer tokens are only honoured when the server speaks TLS, like Azure.
    """

    def __init__(self, account: str, key: str, *, tls: bool,
                 token_validator: Callable[[str], bool] | None = None) -> None:
        self.account = account
        self.key = key
        self.tls = tls
        self.token_validator = token_validator or (lambda token: bool(token))

    def check(self, method: str, raw_path: str, raw_query: str, headers: Mapping[str, str]) -> str:
        """Return the scheme used ("SharedKey" or "Bearer"), or raise the service's error."""
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
        if not auth:
            raise BatchServiceError(401, "AuthenticationRequired",
                                    "Server failed to authenticate the request. The Authorization header is missing.")
        scheme, _, cred = auth.partition(" ")
        if scheme == "SharedKey":
            self._check_shared_key(method, raw_path, raw_query, headers, cred.strip())
            return "SharedKey"
        if scheme.lower() == "bearer":
            if not self.tls:
                raise _auth_failed("Bearer tokens are only accepted over HTTPS.")
            if not self.token_validator(cred.strip()):
                raise BatchServiceError(401, "AuthenticationFailed",
                                        "Server failed to authenticate the request. The access token is invalid.")
            return "Bearer"
        raise _auth_failed(f"The authentication scheme {scheme!r} is not supported.")

    def _check_shared_key(self, method: str, raw_path: str, raw_query: str,
                          headers: Mapping[str, str], cred: str) -> None:
        account, _, signature = cred.partition(":")
        if account != self.account:
            raise _auth_failed(f"The account name {account!r} in the Authorization header does not match.")
        lower = {k.lower(): v for k, v in headers.items()}
        date = lower.get("ocp-date") or lower.get("date")
        if not date:
            raise _auth_failed("Request must contain the ocp-date or Date header.")
        try:
            when = parsedate_to_datetime(date)
        except (TypeError, ValueError):
            raise _auth_failed(f"The date header {date!r} is not a valid HTTP date.") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        if abs(dt.datetime.now(dt.timezone.utc) - when) > MAX_CLOCK_SKEW:
            raise _auth_failed("Request date header too old or too far in the future.")
        expected = sign(self.key, string_to_sign(method, raw_path, raw_query, headers, self.account))
        if not hmac.compare_digest(expected, signature):
            raise _auth_failed(
                f"The MAC signature found in the HTTP request '{signature}' is not the same as any computed signature.")
