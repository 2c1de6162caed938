"""The ``%azpar`` commands, one module per group. Each handler takes the magic's context, the words after the
command's name and the command's usage line (from the table in ``magics/line.py``), and returns what the line
magic returns."""
