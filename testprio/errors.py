"""The one exception type that carries a user-facing sentence."""


class TestprioError(Exception):
    """A problem the user can fix.

    The message is one sentence: what was wrong, in which input, and what to do.
    """

    __test__ = False  # keep pytest from collecting it as a test class
