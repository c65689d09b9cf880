"""The one exception the data layer raises for missing, corrupt or undownloadable files."""

from __future__ import annotations


class DatasetError(RuntimeError):
  """A dataset file is missing, corrupt or could not be downloaded.

  The message names the file (or URL), says what was wrong and what to do about it. Bad *arguments* raise
  ``ValueError`` instead.
  """
