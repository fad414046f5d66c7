"""The one exception the data builders raise for a user-fixable problem."""


class DataError(Exception):
    """Missing or malformed data on disk; the message names the expected layout.

    The scripts print it as one ``error: ...`` line and exit with status 2.
    """
