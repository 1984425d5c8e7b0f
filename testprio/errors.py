"""The one exception type that carries a user-facing sentence."""

from testprio.redact import redact_text


class TestprioError(Exception):
    """A problem the user can fix.

    The message is one sentence: what was wrong, in which input, and what to do. URLs in it
    lose their ``user:password@``, query and fragment (``testprio.redact``): the sentence
    reaches terminals, run.json, logs and the report.
    """

    __test__ = False  # keep pytest from collecting it as a test class

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact_text(arg) if isinstance(arg, str) else arg for arg in args))
