"""The one exception type a stage raises for bad input: the CLI prints it as one line."""


class GftError(Exception):
    """A user-facing error: bad config, bad data, missing model, unwritable folder.

    The CLI prints ``error: <message>`` and exits with status 2; no manifest is written.
    """
