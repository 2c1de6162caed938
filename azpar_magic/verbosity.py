"""How much azpar says about its own work: the verbose switch (``%azpar verbose``, ``AZPAR_LOG``).

Every module logs through ``logging.getLogger(__name__)``; the package logger holds a ``NullHandler`` only, so a
library import configures nothing and an application's own logging setup decides where the records go. When the
user asks (the magic, or ``AZPAR_LOG`` set at import), one handler writing to the current ``sys.stderr`` (the
notebook's stderr in a kernel) is put on the package logger, and at ``http`` also on the Azure SDK's HTTP logging
policy logger, which prints each request and response line. Every record through that handler is redacted first:
SAS signatures, account keys, connection-string keys, authorization headers and the values of the secret
environment variables a profile names never reach the notebook, even when a message quotes them.

A layer-1 module (standard library only), so every layer may import it.
"""

from __future__ import annotations

import logging
import os
import re
import sys

PACKAGE_LOGGER = "azpar_magic"
HTTP_LOGGER = "azure.core.pipeline.policies.http_logging_policy"
ENV = "AZPAR_LOG"
LEVELS = ("off", "info", "debug", "http")  # what AZPAR_LOG and %azpar verbose take ("on" is debug)
REDACTED = "REDACTED"

logging.getLogger(PACKAGE_LOGGER).addHandler(logging.NullHandler())

# Secrets by their shape: the value after the name is replaced, the name stays so the line still reads. Each
# pattern runs only when its word is in the text (most records hold none of them).
_SHAPES = (
    (("sig=",), re.compile(r"(?i)(\bsig=)[^&\s'\"]+")),  # a SAS token's signature, in a URL or alone
    (("sig%3d",), re.compile(r"(?i)(sig%3D)[^&\s'\"]+")),  # ... in a URL quoted inside another one
    (("accountkey=",), re.compile(r"(?i)(\bAccountKey=)[^;\s'\"]+")),  # connection strings
    (("sharedaccesssignature=",), re.compile(r"(?i)(\bSharedAccessSignature=)[^;\s'\"]+")),
    (("authorization",), re.compile(r"(?i)(['\"]?\bAuthorization['\"]?\s*[:=]\s*['\"]?)[^'\"\n,}]+")),  # a header
    (("sharedkey",), re.compile(r"(?i)(\bSharedKey(?:Lite)?\s+[^:\s]+:)[A-Za-z0-9+/=]+")),  # its value alone
    (
        ("account_key", "client_secret", "password"),
        re.compile(r"(?i)(\b(?:account_key|client_secret|password)\s*[=:]\s*['\"]?)[^'\"\s,;)]+"),
    ),
)
# Environment variables whose values are secrets (profiles name them: batch_key_env, storage_key_env, ...).
_SECRET_WORDS = ("KEY", "SECRET", "PASSWORD", "TOKEN", "CONNECTION_STRING", "SAS")
_secret_names: dict[tuple[str, ...], list[str]] = {}  # the variables' names -> those that name secrets
_SECRET_MIN = 8  # shorter values are not replaced (they would mangle ordinary words)


def redact(text: str) -> str:
    """``text`` with every secret it may quote replaced by REDACTED."""
    lowered = text.lower()
    for words, shape in _SHAPES:
        if any(word in lowered for word in words):
            text = shape.sub(lambda m: m.group(1) + REDACTED, text)
    for name in _names_of_secrets():
        value = os.environ.get(name, "")
        if len(value) >= _SECRET_MIN and value in text:
            text = text.replace(value, REDACTED)
    return text


def _names_of_secrets() -> list[str]:
    """The environment variables whose names say they hold a secret (looked for again when the names change)."""
    names = tuple(os.environ)
    if names not in _secret_names:
        _secret_names.clear()
        _secret_names[names] = [n for n in names if any(word in n.upper() for word in _SECRET_WORDS)]
    return _secret_names[names]


class RedactingFilter(logging.Filter):
    """Formats the record's message, redacts it, and keeps the result as the message (no args left), so no
    handler after it can format the secret back in."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose args do not fit its format: show what there is
            message = f"{record.msg} {record.args}"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (a kernel swaps it; a test captures it)."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(RedactingFilter())
        self.setFormatter(logging.Formatter("[azpar %(levelname)s %(name)s] %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


_handler: _CurrentStderr | None = None
_level = "off"


def set_level(level: str) -> str:
    """Switch what is shown: ``off``; ``info`` (azpar's INFO records); ``debug`` or ``on`` (azpar's DEBUG too);
    ``http`` (debug, plus each HTTP request and response the Azure SDK sends, headers redacted). Returns the
    level now in effect. Unknown words raise ValueError naming the known ones."""
    global _handler, _level
    word = level.strip().lower()
    word = "debug" if word == "on" else word
    if word not in LEVELS:
        raise ValueError(f"unknown verbosity {level!r}; expected one of on, {', '.join(LEVELS)}")
    package, http = logging.getLogger(PACKAGE_LOGGER), logging.getLogger(HTTP_LOGGER)
    if _handler is not None:
        package.removeHandler(_handler)
        http.removeHandler(_handler)
    if word == "off":
        _handler = None
        package.setLevel(logging.NOTSET)
        http.setLevel(logging.NOTSET)
    else:
        _handler = _handler or _CurrentStderr()
        package.addHandler(_handler)
        package.setLevel(logging.INFO if word == "info" else logging.DEBUG)
        if word == "http":
            http.addHandler(_handler)
            http.setLevel(logging.INFO)  # the policy logs each request and response at INFO
        else:
            http.setLevel(logging.NOTSET)
    _level = word
    return word


def level() -> str:
    """The level in effect: off, info, debug or http."""
    return _level


def from_environment(environ: dict[str, str] | None = None) -> str:
    """Apply ``AZPAR_LOG`` (debug, info, http, on or off) when it is set; an unknown value is said once on stderr
    and ignored, so a typo never stops the import. Returns the level in effect."""
    value = (os.environ if environ is None else environ).get(ENV, "").strip()
    if not value:
        return _level
    try:
        return set_level(value)
    except ValueError as exc:
        print(f"azpar: {ENV}: {exc}; logging stays {_level}", file=sys.stderr)
        return _level
