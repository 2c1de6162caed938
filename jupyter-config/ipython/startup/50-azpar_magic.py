# Loads the azpar_magic extension (%%azpar) in every IPython kernel of this environment.
# Installed by `python -m azpar_magic enable --sys-prefix` (or --user), removed by
# `python -m azpar_magic disable ...`; see docs/jupyterhub.md. A startup file, not an
# `extensions = [...]` setting, because a user's own extensions list would replace that one.
# A --user copy runs in the kernels of every environment, so where azpar_magic is not
# installed (another environment, or after uninstalling it) it does nothing, silently.
def _azpar_autoload():
    import importlib.util
    import sys

    try:
        shell = get_ipython()  # noqa: F821 - defined in the namespace startup files run in
    except NameError:
        return
    if shell is None or "azpar_magic" in shell.extension_manager.loaded:
        return
    try:
        if importlib.util.find_spec("azpar_magic") is None:
            return
    except (ImportError, ValueError):
        return
    try:
        shell.extension_manager.load_extension("azpar_magic")
    except ModuleNotFoundError as exc:
        if exc.name != "azpar_magic":  # a dependency of ours is missing: say so
            print(f"azpar_magic: {type(exc).__name__}: {exc}", file=sys.stderr)
    except Exception as exc:  # never break a kernel's start (a bad config file is reported by the magic)
        print(f"azpar_magic: {type(exc).__name__}: {exc}", file=sys.stderr)


_azpar_autoload()
del _azpar_autoload
