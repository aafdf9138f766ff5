"""semsearch: the shared library (generated API stubs, process and dataset helpers) and the CLI."""

__version__ = "0.1.0"
