# Loads the azpar_magic extension (%%azpar) in every IPython kernel of this environment.
# Installed by `python -m azpar_magic enable --sys-prefix` (or --user), removed by
# `python -m azpar_magic disable ...`; see docs/jupyterhub.md. A startup file, not an
# `extensions = [...]` setting, because a user's own extensions list would replace that one.
def _azpar_autoload():
    import sys

    try:
        shell = get_ipython()  # noqa: F821 - defined in the namespace startup files run in
    except NameError:
        return
    if shell is None or "azpar_magic" in shell.extension_manager.loaded:
        return
    try:
        shell.extension_manager.load_extension("azpar_magic")
    except Exception as exc:  # never break a kernel's start (a bad config file is reported by the magic)
        print(f"azpar_magic: {type(exc).__name__}: {exc}", file=sys.stderr)


_azpar_autoload()
del _azpar_autoload
