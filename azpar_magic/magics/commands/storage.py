"""``%azpar storage``: the profile's Blob storage (azpar_magic.storage) from the notebook; transfers of large files
show one progress line."""

from __future__ import annotations

import shlex

from IPython.core.error import UsageError

from ...errors import ConfigError, StorageError
from ..context import MagicContext
from ..progress import TransferProgress, size_text
from ..usage import usage_errors
from ..words import read_words

WANTED = {"ls": (0, 1), "get": (2, 2), "put": (2, 2), "rm": (1, 1)}  # how many paths each action takes


def storage(context: MagicContext, words: list[str], usage: str) -> None:
    """ls, get, put or rm (-r, -y) on az:// paths, with the active profile or --profile NAME."""
    from ... import storage as blobs

    with usage_errors(ValueError, "%azpar storage: {}"):
        words = shlex.split(" ".join(words))
    read = read_words(words, usage, options=("--profile",), flags=("-r", "-y"))
    profile, flags, args = read.option("--profile"), read.flags, read.rest
    if not args or args[0] not in WANTED or (flags and args[0] != "rm"):
        raise UsageError(usage)
    action, args = args[0], args[1:]
    if not WANTED[action][0] <= len(args) <= WANTED[action][1]:
        raise UsageError(usage)
    progress = TransferProgress()
    try:
        with (
            usage_errors(RuntimeError, f"%azpar storage {action} failed: {{}}"),
            usage_errors(
                (StorageError, FileNotFoundError, ValueError, ConfigError),  # before RuntimeError
                f"%azpar storage {action}: {{}}",
            ),
        ):
            if action == "ls":
                entries = blobs.ls(args[0] if args else "", profile=profile)
                for entry in entries:
                    size = "" if entry.size is None else size_text(entry.size)
                    print(f"{size:>10}  {entry.path}")
                if not entries:
                    print("azpar: nothing there")
                if entries.hidden:
                    print(
                        f"azpar: {entries.hidden} container{'s' if entries.hidden != 1 else ''} of other hub "
                        "users not listed"
                    )
            elif action == "get":
                written = blobs.get(args[0], args[1], profile=profile, progress=progress)
                progress.close()
                print(f"azpar: downloaded {len(written)} file{'s' if len(written) != 1 else ''} to {args[1]}")
            elif action == "put":
                written = blobs.put(args[0], args[1], profile=profile, progress=progress)
                progress.close()
                print(f"azpar: uploaded {len(written)} file{'s' if len(written) != 1 else ''} to {args[1]}")
            else:
                _remove(blobs, args[0], flags, profile)
    finally:
        progress.close()  # a failed transfer ends its line before the error


def _remove(blobs, path: str, flags: set[str], profile: str | None) -> None:
    """rm lists what it would delete; with -y it deletes."""
    doomed = blobs.rm(path, recursive="-r" in flags, dry_run="-y" not in flags, profile=profile)
    if "-y" in flags:
        print(f"azpar: deleted {len(doomed)} blob{'s' if len(doomed) != 1 else ''}")
    else:
        print("\n".join(doomed))
        print(
            f"azpar: {len(doomed)} blob{'s' if len(doomed) != 1 else ''} would be deleted; nothing was: "
            "add -y to delete"
        )
