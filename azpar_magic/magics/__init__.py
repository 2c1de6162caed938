"""The IPython side: the ``%%azpar`` cell magic and the ``%azpar`` line magic. The only package that imports
IPython; it parses what the user typed, calls the api and the session, and displays what comes back."""

from .core import AzparMagics

__all__ = ["AzparMagics"]
