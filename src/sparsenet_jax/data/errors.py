"""The data package's error: what the trainer prints as one line."""

from __future__ import annotations


class DatasetNotFoundError(RuntimeError):
    """The dataset has not been prepared in ``data_dir``; the message says how to prepare it.

    Also the base of ``images.ImageDataError``: local image data that cannot be read as
    given. Either way the message is one line naming the file or folder at fault.
    """
