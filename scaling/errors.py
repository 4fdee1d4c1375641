"""The one exception type for mistakes a user can make and fix.

The CLI turns a `UserError` into a one-line message on stderr and exit status 2, with no traceback.
Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Invalid input from the user: a bad config, corpus, query or sweep spec.

    The message names the offending value and says how to fix it, in one line.
    """

    exit_status = 2


def yaml_problem(error: Exception) -> str:
    """Return a PyYAML parse error as one line with its 1-based line and column, e.g. "line 3, column 7: ..."."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
