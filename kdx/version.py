"""The version of kdx (the package root re-exports it as ``kdx.__version__``)."""

__version__ = "0.1.0"
