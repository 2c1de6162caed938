"""Views of job snapshots: pure text/HTML formatters here, widgets in later modules."""
