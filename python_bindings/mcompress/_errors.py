"""The exceptions mcompress raises. Every one derives from mcompress.Error."""


class Error(Exception):
    """Base class of every mcompress error."""


class InputError(Error, ValueError):
    """Bad options, a malformed file, unusable data (the CLI's exit status 2)."""


class FileError(InputError, OSError):
    """A file that cannot be opened, read, created or written."""


class GateError(Error):
    """A recipe's accuracy gate was missed (the CLI's exit status 3). `report` holds the report."""

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report
