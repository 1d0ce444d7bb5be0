"""Errors a user can act on: the CLI prints these as one line and exits 2."""


class RagfreshError(Exception):
    """Bad configuration or input, or a state the command cannot work from."""


class ConfigError(RagfreshError, ValueError):
    """A setting has a value ragfresh cannot use."""


class PoliciesNotFoundError(RagfreshError, FileNotFoundError):
    """The policies folder does not exist."""
