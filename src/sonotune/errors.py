"""User-facing errors: anything raised as `SonotuneError` reaches the user as one line and exit code 2."""


class SonotuneError(Exception):
    """A problem with the user's input (file, key, value) rather than a bug."""


class ConfigError(SonotuneError):
    """params.yaml (or a file it points to) is missing, malformed or holds a bad value."""


class DataError(SonotuneError):
    """A dataset root, image or manifest does not look as expected."""
