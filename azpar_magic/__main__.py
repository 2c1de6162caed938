"""``python -m azpar_magic`` (also the ``azpar-magic`` command): administration commands.

    python -m azpar_magic enable  --sys-prefix | --user | --prefix DIR
    python -m azpar_magic disable --sys-prefix | --user | --prefix DIR
    python -m azpar_magic status
    python -m azpar_magic doctor [PROFILE] [--run]

``enable`` makes every IPython kernel of the environment (``--sys-prefix``, for a
JupyterHub image) or of the current user (``--user``) load ``%%azpar`` without
``%load_ext``; ``disable`` undoes it. See docs/jupyterhub.md. ``doctor`` prints the pre-flight
table of a profile (azpar_magic/doctor.py) and exits 1 when a line failed.
"""

from __future__ import annotations

import argparse
import sys

from . import install
from .errors import InstallError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m azpar_magic", description="Turn auto-loading of the %%azpar magic on or off."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("enable", "load azpar_magic in every IPython kernel of the scope"),
        ("disable", "stop loading it there"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        where = sub.add_mutually_exclusive_group(required=True)
        where.add_argument(
            "--sys-prefix",
            dest="scope",
            action="store_const",
            const="sys-prefix",
            help=f"this environment ({sys.prefix}/etc/ipython/startup): every user of it",
        )
        where.add_argument(
            "--user",
            dest="scope",
            action="store_const",
            const="user",
            help="the current user's IPython profile (profile_default/startup)",
        )
        where.add_argument("--prefix", metavar="DIR", help="another environment's prefix (DIR/etc/ipython/startup)")
    commands.add_parser("status", help="where auto-loading is on")
    doctor = commands.add_parser(
        "doctor",
        help="pre-flight check of a profile: what its identity can do, with fixes",
        description="Check a profile (default: the configured one) before the first run.",
    )
    doctor.add_argument("profile", nargs="?", help="profile name (default: the config files' profile, else local)")
    doctor.add_argument("--run", action="store_true", help="also run one iteration end to end (costs node time)")
    args = parser.parse_args(argv)

    if args.command == "doctor":
        from . import doctor as checks

        report = checks.diagnose(args.profile, run=args.run)
        print(report.text())
        return 1 if report.failed else 0
    try:
        if args.command == "status":
            for scope, path in install.status().items():
                state = f"on ({path})" if path else f"off ({install.startup_path(scope)} absent)"
                print(f"{scope}: {state}")
            return 0
        scope = "prefix" if getattr(args, "prefix", None) else args.scope
        if args.command == "enable":
            path = install.enable(scope, args.prefix)
            print(f"azpar_magic: enabled; IPython kernels started from now on load it ({path})")
        else:
            removed = install.disable(scope, args.prefix)
            print(
                f"azpar_magic: disabled (removed {removed})"
                if removed
                else f"azpar_magic: was not enabled there ({install.startup_path(scope, args.prefix)} absent)"
            )
    except InstallError as exc:
        print(f"azpar_magic: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
