"""The one exception type for mistakes a user can make and fix.

The CLI turns a `UserError` into a one-line message on stderr and exit status 2, with no traceback.
Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Invalid input from the user: a bad config, corpus, query or sweep spec.

    The message names the offending value and says how to fix it, in one line.
    """

    exit_status = 2
