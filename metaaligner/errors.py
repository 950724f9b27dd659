"""Errors that the scripts print as one line and exit on (no traceback)."""


class MetaAlignerError(Exception):
    """A user-facing error: bad input, unknown key, missing file. Printed as one line."""


class DataError(MetaAlignerError):
    """Bad data in a file: names the file, row (1-based, header excluded) and column."""

    def __init__(self, path, message: str, row: int | None = None, column: str | None = None):
        where = str(path)
        if row is not None:
            where += f": row {row}"
        if column is not None:
            where += f", column {column!r}" if row is not None else f": column {column!r}"
        super().__init__(f"{where}: {message}")
        self.path, self.row, self.column = path, row, column
