"""Errors that the entrypoint turns into one line on stderr (no traceback)."""


class UserError(Exception):
    """Bad input from the user: config, data location, device. Message is one line."""


class ConfigError(UserError):
    pass


class DataNotPreparedError(UserError):
    pass


class NonFiniteLossError(UserError):
    pass
