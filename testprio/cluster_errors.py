"""What a failed call to a Kubeflow Pipelines server reads as: ``ClusterError``, one
sentence in words (no exception class names), which notebooks show without a traceback."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

from testprio.errors import TestprioError


class ClusterError(TestprioError):
    """The Kubeflow Pipelines server could not be reached or refused a request.

    Its message is one sentence; IPython and Jupyter show that sentence alone, without a
    traceback through testprio's frames (they call ``_render_traceback_`` where an
    exception has one).
    """

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


def _no_answer_reasons() -> tuple[tuple[tuple[type[BaseException], ...], str], ...]:
    """Why a request got no answer, in words, by the first matching cause (most specific
    first: urllib3's connection errors are timeouts by class)."""
    import socket
    import ssl

    import urllib3

    return (
        ((ConnectionRefusedError,), "nothing answers at that address"),
        ((socket.gaierror, urllib3.exceptions.NameResolutionError), "its name does not resolve"),
        ((ssl.SSLError, urllib3.exceptions.SSLError), "the secure connection failed"),
        ((ConnectionResetError, BrokenPipeError), "the connection was dropped"),
        ((TimeoutError, urllib3.exceptions.TimeoutError), "it did not answer in time"),
    )


def _causes(error: BaseException) -> list[BaseException]:
    """``error`` and what caused it: urllib3's ``reason``, then ``__cause__``/``__context__``."""
    found: list[BaseException] = []
    while error is not None and error not in found:
        found.append(error)
        reason = getattr(error, "reason", None)
        error = (
            reason if isinstance(reason, BaseException) else error.__cause__ or error.__context__
        )
    return found


def _no_answer(error: BaseException) -> str:
    causes = _causes(error)
    for kinds, words in _no_answer_reasons():
        if any(isinstance(cause, kinds) for cause in causes):
            return words
    return "it gave no answer"


@contextlib.contextmanager
def kfp_errors(host: str) -> Iterator[None]:
    """Turn the KFP client's exceptions into one sentence naming the server and what to do."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    try:
        yield
    except ApiException as exc:
        detail = exc.reason or ""
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            body = json.loads(exc.body)
            detail = body.get("message") or body.get("error") or detail
        if not exc.status:  # no HTTP answer at all
            raise ClusterError(
                f"cannot reach Kubeflow Pipelines at {host}: {_no_answer(exc)}; check --host."
            ) from None
        raise ClusterError(
            f"Kubeflow Pipelines at {host} refused the request (HTTP {exc.status}: "
            f"{str(detail).strip()[:300]})."
        ) from None
    except (urllib3.exceptions.HTTPError, TimeoutError, ConnectionError) as exc:
        raise ClusterError(
            f"cannot reach Kubeflow Pipelines at {host}: {_no_answer(exc)}; check --host "
            "(with KFP standalone: kubectl port-forward -n kubeflow svc/ml-pipeline-ui "
            "8080:80, then --host http://localhost:8080)."
        ) from None
