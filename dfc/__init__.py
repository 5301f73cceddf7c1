"""`dfc`: the command-line tool of dynamic-frame-compression."""

__version__ = "0.1.0"
