"""Request authentication: Batch SharedKey signatures, and bearer tokens over TLS.

The SharedKey string-to-sign is rebuilt from the request exactly as it arrived (method, the
eleven standard headers, the sorted ``ocp-*`` headers, ``/account`` + the encoded path, and
the sorted query parameters with their first non-empty value), then compared in constant
time with the HMAC-SHA256 the client sent. Any mismatch is the service's 403
AuthenticationFailed, so a wrong key fails here the way it fails against Azure.

Roles (authorization, after authentication). Source: the Batch article "Role-based access
control for Azure Batch service" (MicrosoftDocs azure-docs, articles/batch/batch-role-based-
access-control.md) and the built-in role definitions it lists. *Azure Batch Job Submitter* has
the action ``Microsoft.Batch/batchAccounts/pools/read`` and the data actions ``jobs/*`` and
``jobSchedules/*``; *Azure Batch Data Contributor* and *Azure Batch Account Contributor* add
``pools/*``. Roles apply only to Microsoft Entra identities: "the Batch shared key credentials
give full permission". So the account's own key, and any bearer token without a role, may do
everything. Because the backend's identity modes cannot be exercised here without an identity
provider, a test stands in for "an Entra identity holding role R" with a credential of its own:
``svc.add_identity(role)`` returns a further SharedKey name and key bound to R (a test-only
device: Azure has no role-bound keys), and ``svc.grant_token(token, role)`` binds a bearer token.
A request its role does not allow gets 403 ``AuthorizationFailed`` before anything changes.
What the sources leave open, and is modelled as marked: account-level reads (supported images,
node counts, usage metrics) are allowed to every role (Job Submitter lacks
``batchAccounts/read``); ``evaluateautoscale`` is a POST on the pool and counts as a pool write.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qs

from .errors import BatchServiceError

SIGNED_HEADERS = (
    "content-encoding", "content-language", "content-length", "content-md5", "content-type", "date",
    "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range",
)
MAX_CLOCK_SKEW = dt.timedelta(minutes=15)

JOB_SUBMITTER = "Azure Batch Job Submitter"
DATA_CONTRIBUTOR = "Azure Batch Data Contributor"
ACCOUNT_CONTRIBUTOR = "Azure Batch Account Contributor"
#: What each built-in role may do, in the permission words of :func:`permission_for`.
ROLES: dict[str, frozenset[str]] = {
    JOB_SUBMITTER: frozenset({"pools/read", "jobs", "applications/read", "account/read"}),
    DATA_CONTRIBUTOR: frozenset({"pools/read", "pools/write", "jobs", "applications/read", "account/read"}),
    ACCOUNT_CONTRIBUTOR: frozenset({"pools/read", "pools/write", "jobs", "applications/read", "account/read"}),
}
_ACCOUNT_READS = {"Pools_ListPoolNodeCounts", "Pools_ListPoolUsageMetrics", "Pools_ListSupportedImages"}


def permission_for(operation_id: str, method: str) -> str:
    """The permission an operation needs: pool and node operations are ``pools/read`` (GET,
    HEAD) or ``pools/write`` (anything else); jobs, tasks and job schedules are ``jobs``."""
    if operation_id in _ACCOUNT_READS:
        return "account/read"
    family = operation_id.split("_", 1)[0]
    if family in ("Pools", "Nodes"):
        return "pools/read" if method in ("GET", "HEAD") else "pools/write"
    if family == "Applications":
        return "applications/read"
    return "jobs"


def authorization_failed(role: str, operation_id: str, permission: str) -> BatchServiceError:
    return BatchServiceError(
        403, "AuthorizationFailed",
        f"This request is not authorized to perform this operation: the role {role!r} does not grant "
        f"Microsoft.Batch/batchAccounts/{permission} needed by {operation_id}.",
        [("Role", role), ("Permission", permission)])


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
        self.identities: dict[str, tuple[str, str]] = {}  # SharedKey name -> (key, role)
        self.token_roles: dict[str, str] = {}

    def add_identity(self, name: str, key: str, role: str) -> None:
        """A further SharedKey credential standing in for an Entra identity with ``role``."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; modelled: {', '.join(ROLES)}")
        self.identities[name] = (key, role)

    def grant_token(self, token: str, role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; modelled: {', '.join(ROLES)}")
        self.token_roles[token] = role

    def clear_roles(self) -> None:
        self.identities.clear()
        self.token_roles.clear()

    def role_of(self, headers: Mapping[str, str]) -> str | None:
        """The role of an authenticated request's credential; None: full access (the account
        key, or a bearer token without a role)."""
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "") or ""
        scheme, _, cred = auth.partition(" ")
        if scheme == "SharedKey":
            found = self.identities.get(cred.strip().partition(":")[0])
            return found[1] if found else None
        if scheme.lower() == "bearer":
            return self.token_roles.get(cred.strip())
        return None

    def authorize(self, operation_id: str, method: str, headers: Mapping[str, str]) -> None:
        """Raise 403 AuthorizationFailed when the credential's role does not allow the operation."""
        role = self.role_of(headers)
        if role is None:
            return
        needed = permission_for(operation_id, method)
        if needed not in ROLES[role]:
            raise authorization_failed(role, operation_id, needed)

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
        key = self.key
        if account in self.identities:
            key = self.identities[account][0]
        elif account != self.account:
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
        expected = sign(key, string_to_sign(method, raw_path, raw_query, headers, account))
        if not hmac.compare_digest(expected, signature):
            raise _auth_failed(
                f"The MAC signature found in the HTTP request '{signature}' is not the same as any computed signature.")
