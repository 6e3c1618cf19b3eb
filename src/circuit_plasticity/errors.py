"""One error type for bad user input: the CLI turns it into a one-line message and exit code 2."""


class UserError(ValueError):
    """Input the user can fix: the message names the problem and the fix."""
