"""A classifier behind an HTTP prediction API, as a checked, counted, budgeted labels function.

Protocol (JSON over HTTP POST, one request per batch)::

    request  {"inputs": [[...], ...]}          # the batch as nested lists, shape (batch, *input_shape)
    response {"labels": [3, 1, ...]}           # one integer class per input, or
             {"scores": [[0.1, ...], ...]}     # (batch, nb_classes) finite scores, read by argmax

Faults: a connection error, a timeout or an HTTP 408, 429 or 5xx status is retried after an exponential
backoff, up to ``max_retries`` times; after that, or on any other HTTP error, :class:`PredictionAPIError`
is raised. A response that breaks the protocol (not JSON, no labels, wrong length, labels out of range,
NaN scores) raises ValueError at once: it is not a transient fault, and it is never read as votes.

Accounting: every input sent counts as one query, retried ones included (the server saw them).
With ``query_budget`` set, a request that would exceed it raises
:class:`~art_smoothing_plugin.classifiers.QueryBudgetExceeded` before it is sent.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping

import numpy as np

from .._validation import check_int_at_least, check_positive_float
from .callable import OUTPUT_KINDS, QueryCounter, labels_from_output

__all__ = ["HTTPClassifier", "PredictionAPIError"]

#: HTTP statuses worth retrying: the server may answer the same request later.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class PredictionAPIError(RuntimeError):
    """The prediction API did not answer a batch (after the allowed retries, or with a non-retryable
    HTTP error). Nothing from that batch was counted as a vote."""


class HTTPClassifier(QueryCounter):
    """Queries a model server over HTTP in batches; usable wherever a query-only classifier is.

    :param url: the endpoint that takes POST requests of the protocol above.
    :param nb_classes: number of classes.
    :param batch_size: most inputs per request.
    :param timeout: seconds to wait for each response.
    :param max_retries: retries of a batch after a connection error, timeout or retryable status.
    :param backoff: seconds before the first retry; doubled for each further retry, up to ``max_backoff``.
    :param query_budget: most inputs ever sent, retries included; ``None`` for no limit.
    :param headers: extra request headers (an API key, for instance).
    :param output: ``"auto"``, ``"labels"`` or ``"scores"``: which answer to require.
    :param sleep: the function used to wait between retries (tests pass a fake one).

    Counters: ``query_count`` (inputs sent), ``request_count`` (HTTP requests made), ``retry_count``
    (requests that were retries) and ``failure_count`` (requests that failed).
    """

    def __init__(
        self,
        url: str,
        nb_classes: int,
        *,
        batch_size: int = 256,
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        query_budget: int | None = None,
        headers: Mapping[str, str] | None = None,
        output: str = "auto",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"url must be an http:// or https:// URL, got {url!r}")
        if output not in OUTPUT_KINDS:
            raise ValueError(f"output must be one of {OUTPUT_KINDS}, got {output!r}")
        super().__init__(query_budget)
        self.url = url
        self.nb_classes = check_int_at_least("nb_classes", nb_classes, 2)
        self.batch_size = check_int_at_least("batch_size", batch_size, 1)
        self.timeout = check_positive_float("timeout", timeout)
        self.max_retries = check_int_at_least("max_retries", max_retries, 0)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError(f"backoff and max_backoff must be >= 0, got {backoff!r} and {max_backoff!r}")
        self.headers = {"Content-Type": "application/json", **dict(headers or {})}
        self.output = output
        self._sleep = sleep
        self.request_count = 0
        self.retry_count = 0
        self.failure_count = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Labels ``(len(x),)`` int64 of a NumPy batch, in requests of at most ``batch_size`` inputs."""
        x = np.asarray(x, dtype=np.float32)
        parts = [
            self._request_labels(x[start : start + self.batch_size])
            for start in range(0, len(x), self.batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    @property
    def counters(self) -> dict[str, int]:
        """The accounting, as a dict (reported in certification results)."""
        return {
            "queries": self.query_count,
            "requests": self.request_count,
            "retries": self.retry_count,
            "failures": self.failure_count,
        }

    def _request_labels(self, chunk: np.ndarray) -> np.ndarray:
        body = json.dumps({"inputs": chunk.tolist()}).encode("utf-8")
        last_error: str = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.retry_count += 1
                self._sleep(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))
            self._charge(len(chunk))
            self.request_count += 1
            request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read()
            except urllib.error.HTTPError as error:
                self.failure_count += 1
                if error.code not in RETRYABLE_STATUSES:
                    raise PredictionAPIError(
                        f"the prediction API at {self.url} answered HTTP {error.code} ({error.reason}); "
                        "not retried"
                    ) from error
                last_error = f"HTTP {error.code} ({error.reason})"
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
                self.failure_count += 1
                reason = getattr(error, "reason", error)
                last_error = f"{type(reason).__name__}: {reason}"
                continue
            return self._parse(payload, len(chunk))
        raise PredictionAPIError(
            f"the prediction API at {self.url} failed {self.max_retries + 1} times for a batch of "
            f"{len(chunk)} inputs (last error: {last_error}); {self.query_count} queries spent so far"
        )

    def _parse(self, payload: bytes, batch: int) -> np.ndarray:
        try:
            answer = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(
                f"the prediction API at {self.url} returned a body that is not JSON: {error}"
            ) from None
        keys = ("labels", "scores") if self.output == "auto" else (self.output,)
        found = [key for key in keys if isinstance(answer, dict) and key in answer]
        if not found:
            shown = sorted(answer)[:5] if isinstance(answer, dict) else type(answer).__name__
            raise ValueError(
                f"the prediction API at {self.url} must answer a JSON object with "
                f"{' or '.join(repr(k) for k in keys)}; got {shown}"
            )
        kind = found[0]
        return labels_from_output(
            answer[kind], batch, self.nb_classes, kind, who=f"prediction API at {self.url}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, nb_classes={self.nb_classes}, {self.counters})"
