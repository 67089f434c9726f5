"""Errors a user can fix. The entry points print them as one clear message, without a traceback, and exit with
`USER_ERROR_EXIT_CODE`."""

USER_ERROR_EXIT_CODE = 2


class VitclsError(Exception):
    """Base class: the message names the file or setting at fault and what to do."""


class ConfigError(VitclsError, ValueError):
    """A setting has a value that cannot work."""
