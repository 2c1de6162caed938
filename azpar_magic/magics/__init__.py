"""The IPython side: the ``%%azpar`` cell magic and the ``%azpar`` line magic. The only package that imports
IPython; it parses what the user typed, calls the api and the session, and displays what comes back.

line.py holds the class IPython registers and the table of ``%azpar`` commands; cell.py the cell magic and its
options; commands/ one module per group of commands; words.py the one reader of a command's words; finish.py the
end of a waited run; display.py and progress.py what a job shows; usage.py how errors become UsageError.
"""

from .line import AzparMagics

__all__ = ["AzparMagics"]
