"""The client pipeline in flow order: parse the cell, capture its namespace and data, submit through the
engine, merge what comes back. Nothing here imports IPython or a backend other than through backends.base."""
