"""The HTTP prediction-API adapter against real model servers started on 127.0.0.1 by the tests: one
that answers, one that fails some requests, one that times out, ones that answer malformed labels."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from art_smoothing_plugin.classifiers import HTTPClassifier, PredictionAPIError, QueryBudgetExceeded
from art_smoothing_plugin.estimators import DenoisedSmoothingClassifier

SHAPE = (1, 8, 8)
SIGMA = 0.25


class ModelServer:
    """A small model server on loopback. ``answer`` picks the response: ``"labels"``, ``"scores"``,
    ``"short"`` (one label missing), ``"out-of-range"``, ``"not-json"``, ``"no-key"``;
    ``fail_requests`` are request numbers (from 0) answered with ``fail_status``; ``delay_requests`` are
    answered after ``delay`` seconds; ``status`` answers every request with that status."""

    def __init__(self, model: torch.nn.Module, answer: str = "labels") -> None:
        self.model = model
        self.answer = answer
        self.fail_requests: set[int] = set()
        self.fail_status = 500
        self.delay_requests: set[int] = set()
        self.delay = 0.0
        self.status: int | None = None
        self.requests = 0
        self.inputs_seen = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with server._lock:
                    number = server.requests
                    server.requests += 1
                inputs = np.asarray(json.loads(body)["inputs"], dtype=np.float32)
                with server._lock:
                    server.inputs_seen += len(inputs)
                if number in server.delay_requests:
                    time.sleep(server.delay)
                status = server.status or (server.fail_status if number in server.fail_requests else 200)
                payload = server.respond(inputs) if status == 200 else b'{"error": "unavailable"}'
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/predict"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def respond(self, inputs: np.ndarray) -> bytes:
        with self._lock, torch.no_grad():
            scores = self.model(torch.from_numpy(inputs)).numpy()
        labels = scores.argmax(axis=1)
        if self.answer == "labels":
            return json.dumps({"labels": labels.tolist()}).encode()
        if self.answer == "scores":
            return json.dumps({"scores": scores.tolist()}).encode()
        if self.answer == "short":
            return json.dumps({"labels": labels[:-1].tolist()}).encode()
        if self.answer == "out-of-range":
            return json.dumps({"labels": (labels + 10).tolist()}).encode()
        if self.answer == "not-json":
            return b"<html>gateway error</html>"
        if self.answer == "no-key":
            return json.dumps({"predictions": labels.tolist()}).encode()
        raise AssertionError(self.answer)

    def __enter__(self) -> ModelServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve(clean_classifier) -> Iterator:
    servers = []

    def start(answer: str = "labels") -> ModelServer:
        server = ModelServer(clean_classifier, answer).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


class RecordedSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def _local_labels(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).argmax(dim=1).numpy()


@pytest.mark.parametrize("answer", ["labels", "scores"])
def test_answers_are_read_in_batches(answer, serve, clean_classifier, digits):
    server = serve(answer)
    classifier = HTTPClassifier(server.url, 10, batch_size=50)
    x = digits.x_test[:120]
    np.testing.assert_array_equal(classifier(x), _local_labels(clean_classifier, x))
    assert classifier.counters == {"queries": 120, "requests": 3, "retries": 0, "failures": 0}
    assert server.requests == 3 and server.inputs_seen == 120


def test_failed_requests_are_retried_with_backoff_and_counted(serve, clean_classifier, digits):
    server = serve()
    server.fail_requests = {0, 2, 3}  # batch 1 fails once; batch 2 fails twice
    sleep = RecordedSleep()
    classifier = HTTPClassifier(server.url, 10, batch_size=50, max_retries=3, backoff=0.5, sleep=sleep)
    x = digits.x_test[:100]
    np.testing.assert_array_equal(classifier(x), _local_labels(clean_classifier, x))
    assert sleep.delays == [0.5, 0.5, 1.0]
    assert classifier.counters == {"queries": 250, "requests": 5, "retries": 3, "failures": 3}
    assert server.inputs_seen == classifier.query_count


def test_certificates_over_http_equal_local_ones_despite_failures(serve, clean_classifier, denoisers, digits):
    server = serve()
    server.fail_requests = set(range(0, 200, 3))  # every third request fails
    classifier = HTTPClassifier(server.url, 10, batch_size=200, max_retries=2, backoff=0.0)
    denoiser = denoisers[SIGMA]["mse"]
    remote = DenoisedSmoothingClassifier(
        classifier, denoiser, input_shape=SHAPE, nb_classes=10, scale=SIGMA, seed=9, batch_size=200
    )
    local = DenoisedSmoothingClassifier(
        clean_classifier, denoiser, input_shape=SHAPE, nb_classes=10, scale=SIGMA, seed=9, batch_size=200
    )
    x = digits.x_test[:8]
    ours = remote.certify_detailed(x, 100, n0=20)
    expected = local.certify_detailed(x, 100, n0=20)
    np.testing.assert_array_equal(ours.counts_top, expected.counts_top)
    np.testing.assert_array_equal(ours.labels, expected.labels)
    np.testing.assert_array_equal(ours.radii, expected.radii)
    assert ours.extras["queries"] == 8 * 120  # noisy inputs certified on
    api = ours.extras["api"]
    assert api["retries"] == api["failures"] > 0
    assert api["requests"] == 5 + api["retries"]  # 1 selection batch, 4 estimation batches, retries
    assert api["queries"] > 8 * 120  # the failed requests' inputs count too: the server saw them
    assert server.inputs_seen == api["queries"]


def test_a_server_that_keeps_failing_raises_and_certifies_nothing(serve, denoisers, digits):
    server = serve()
    server.status = 503
    classifier = HTTPClassifier(server.url, 10, batch_size=100, max_retries=2, backoff=0.0)
    estimator = DenoisedSmoothingClassifier(
        classifier, denoisers[SIGMA]["mse"], input_shape=SHAPE, nb_classes=10, scale=SIGMA
    )
    with pytest.raises(PredictionAPIError, match=r"failed 3 times .*HTTP 503"):
        estimator.certify(digits.x_test[:4], n=100, n0=20)
    assert classifier.counters == {"queries": 240, "requests": 3, "retries": 2, "failures": 3}


def test_timeouts_are_retried_then_reported(serve, clean_classifier, digits):
    server = serve()
    server.delay, server.delay_requests = 1.0, {0}
    classifier = HTTPClassifier(server.url, 10, timeout=0.2, max_retries=1, backoff=0.0)
    x = digits.x_test[:10]
    np.testing.assert_array_equal(classifier(x), _local_labels(clean_classifier, x))  # the retry answers
    assert classifier.counters == {"queries": 20, "requests": 2, "retries": 1, "failures": 1}

    slow = serve()
    slow.delay, slow.delay_requests = 1.0, set(range(10))
    classifier = HTTPClassifier(slow.url, 10, timeout=0.2, max_retries=1, backoff=0.0)
    with pytest.raises(PredictionAPIError, match="timed out"):
        classifier(x)
    assert classifier.counters == {"queries": 20, "requests": 2, "retries": 1, "failures": 2}


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("short", "one label per input"),
        ("out-of-range", r"outside \[0, 10\)"),
        ("not-json", "not JSON"),
        ("no-key", "'labels' or 'scores'"),
    ],
)
def test_malformed_answers_raise_without_retry(answer, message, serve, denoisers, digits):
    server = serve(answer)
    classifier = HTTPClassifier(server.url, 10, max_retries=3, backoff=0.0)
    estimator = DenoisedSmoothingClassifier(
        classifier, denoisers[SIGMA]["mse"], input_shape=SHAPE, nb_classes=10, scale=SIGMA
    )
    with pytest.raises(ValueError, match=message):
        estimator.certify(digits.x_test[:2], n=50, n0=10)
    assert classifier.request_count == 1


def test_client_errors_are_not_retried(serve, digits):
    server = serve()
    server.status = 400
    classifier = HTTPClassifier(server.url, 10, max_retries=3, backoff=0.0)
    with pytest.raises(PredictionAPIError, match="HTTP 400.*not retried"):
        classifier(digits.x_test[:3])
    assert classifier.request_count == 1 and classifier.query_count == 3


def test_an_unreachable_server_is_reported(serve, digits):
    server = serve()
    url = server.url
    server.__exit__(None, None, None)  # nothing listens on that port any more
    classifier = HTTPClassifier(url, 10, max_retries=1, backoff=0.0, timeout=2.0)
    with pytest.raises(PredictionAPIError, match="failed 2 times"):
        classifier(digits.x_test[:3])


def test_the_query_budget_is_enforced_before_sending(serve, denoisers, digits):
    server = serve()
    classifier = HTTPClassifier(server.url, 10, query_budget=1000, backoff=0.0)
    estimator = DenoisedSmoothingClassifier(
        classifier, denoisers[SIGMA]["mse"], input_shape=SHAPE, nb_classes=10, scale=SIGMA
    )
    with pytest.raises(QueryBudgetExceeded):
        estimator.certify(digits.x_test[:10], n=100, n0=20)  # needs 1200
    assert server.requests == 0 and classifier.query_count == 0


def test_retries_that_would_overspend_the_budget_stop_the_run(serve, denoisers, digits):
    server = serve()
    server.fail_requests = {1}
    classifier = HTTPClassifier(server.url, 10, batch_size=100, query_budget=240, backoff=0.0)
    estimator = DenoisedSmoothingClassifier(
        classifier, denoisers[SIGMA]["mse"], input_shape=SHAPE, nb_classes=10, scale=SIGMA, batch_size=100
    )
    with pytest.raises(QueryBudgetExceeded, match="exhausted"):
        estimator.certify(digits.x_test[:2], n=100, n0=20)  # 240 queries, plus one failed batch of 100
    assert server.inputs_seen <= 240


def test_bad_adapter_arguments_are_refused():
    with pytest.raises(ValueError, match="url"):
        HTTPClassifier("ftp://example.org/predict", 10)
    with pytest.raises(ValueError, match="timeout"):
        HTTPClassifier("http://127.0.0.1:1/", 10, timeout=0)
    with pytest.raises(ValueError, match="output"):
        HTTPClassifier("http://127.0.0.1:1/", 10, output="probabilities")


def test_auto_batch_size_queries_nothing_outside_the_counted_certification(serve, digits):
    # certify_adaptive(batch_size="auto") once timed batch sizes through the counted labels function: a
    # throughput probe of paid requests, which also spent the budget the certification had been checked
    # against. Now the server sees exactly the certification's own samples, and a budget of exactly the
    # worst case is enough.
    server = serve()
    x, max_samples = digits.x_test[:3], 300
    classifier = HTTPClassifier(server.url, 10, batch_size=64, query_budget=len(x) * max_samples)
    estimator = DenoisedSmoothingClassifier(classifier, None, input_shape=SHAPE, nb_classes=10, scale=SIGMA)
    result = estimator.certify_adaptive(
        x, radius=0.25, max_samples=max_samples, n0=20, batch_size="auto", seed=1
    )
    spent = int(result.samples_used.sum())
    assert server.inputs_seen == spent == estimator.query_count == classifier.query_count
    assert server.requests == classifier.request_count and classifier.retry_count == 0
