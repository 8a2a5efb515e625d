"""User-facing errors.

Every problem a user can fix (bad data, bad option, missing weights) is raised as :class:`FERError` with a
one-line message that names the file or option and says what to do. Entry points print that line and exit
non-zero instead of a traceback.
"""


class FERError(RuntimeError):
    """A problem with the user's data, configuration or files; the message is one actionable line."""
