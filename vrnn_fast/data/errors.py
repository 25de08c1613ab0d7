"""The one exception of the data package."""


class DataError(ValueError):
    """Any problem with input data; the message names the file or folder."""
