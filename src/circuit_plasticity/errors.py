"""One error type for bad user input: the CLI turns it into a one-line message and exit code 2."""


class UserError(ValueError):
    """Input the user can fix: the message names the problem and the fix."""


class Unsupported(UserError):
    """A model an analysis cannot take (the message says which part of it, and why): the
    analysis that needs it is refused or skipped with a note, never half-run."""
