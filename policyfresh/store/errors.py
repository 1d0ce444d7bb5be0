"""Errors a user can act on: the CLI prints these as one line and exits 2."""


class PolicyfreshError(Exception):
    """Bad configuration or input, or a state the command cannot work from."""


class ConfigError(PolicyfreshError, ValueError):
    """A setting has a value policyfresh cannot use."""


class PoliciesNotFoundError(PolicyfreshError, FileNotFoundError):
    """The policies folder does not exist."""
