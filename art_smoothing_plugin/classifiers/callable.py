"""Query-only classifiers: any function from a batch of inputs to labels or per-class scores.

Randomized smoothing needs nothing from the base classifier but its label for each noisy input, so a
model of any framework, a scikit-learn pipeline or a remote service can be smoothed once it is wrapped
as ``numpy batch -> labels``. What this module guarantees is that a malformed answer is never counted
as a vote: every answer is checked (one label per input, integers in ``[0, nb_classes)``, or finite
scores of shape ``(batch, nb_classes)``) and anything else raises ValueError before any count is taken.
Every input sent is counted, and an optional query budget is enforced before a query is made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .._validation import check_int_at_least

__all__ = ["QueryBudgetExceeded", "QueryCounter", "QueryOnlyClassifier", "labels_from_output"]

#: How a query-only classifier's answer is read.
OUTPUT_KINDS = ("auto", "labels", "scores")


class QueryBudgetExceeded(RuntimeError):
    """A query would exceed the classifier's query budget. Raised before the query is made, so nothing
    is classified (and nothing certified) past the budget."""


def labels_from_output(
    output: Any, batch: int, nb_classes: int, kind: str = "auto", who: str = "classifier"
) -> np.ndarray:
    """Read a classifier's answer for ``batch`` inputs as ``(batch,)`` int64 labels, or raise ValueError.

    ``kind="labels"``: one integer class index per input (integral floats such as ``3.0`` are accepted,
    ``3.5``, NaN, booleans and out-of-range values are not). ``kind="scores"``: a ``(batch,
    nb_classes)`` array of finite per-class scores (logits, probabilities or one-hot rows), read by
    argmax. ``kind="auto"``: a 1-D answer is labels, a 2-D one scores.
    """
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"output must be one of {OUTPUT_KINDS}, got {kind!r}")
    if isinstance(output, torch.Tensor):
        output = output.detach().cpu().numpy()
    try:
        array = np.asarray(output)
    except (TypeError, ValueError) as error:
        raise ValueError(f"the {who} returned an answer that is not an array: {error}") from None
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(
            f"the {who} must return numbers (labels or scores); got an array of dtype {array.dtype} "
            f"(ragged or non-numeric answer)"
        )
    if kind == "auto":
        kind = "labels" if array.ndim == 1 else "scores"
    if kind == "labels":
        if array.shape != (batch,):
            raise ValueError(
                f"the {who} must return one label per input, shape ({batch},); got shape {array.shape}"
            )
        if array.dtype == bool:
            raise ValueError(f"the {who} returned booleans where integer class labels were expected")
        if not np.issubdtype(array.dtype, np.integer):
            if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
                raise ValueError(
                    f"the {who} must return integer class labels; got non-integer or NaN values such as "
                    f"{array[~(np.isfinite(array) & (array == np.round(array)))][:3].tolist()}"
                )
        if batch and (array.min() < 0 or array.max() >= nb_classes):
            raise ValueError(
                f"the {who} returned labels outside [0, {nb_classes}): values in "
                f"[{array.min()}, {array.max()}]; check nb_classes"
            )
        return array.astype(np.int64)
    if array.shape != (batch, nb_classes):
        raise ValueError(
            f"the {who} must return scores of shape (batch, nb_classes) = ({batch}, {nb_classes}); got "
            f"shape {array.shape}"
        )
    if array.dtype == bool:
        array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"the {who} returned NaN or infinite scores; refusing to read labels from them")
    return np.argmax(array, axis=1).astype(np.int64)


class QueryCounter:
    """Counts the inputs sent to a query-only model and enforces an optional budget on them.

    A replica of a counter in another process (:mod:`art_smoothing_plugin.distributed`) charges a shared
    ledger instead of its own budget (:meth:`charge_to`), so that one budget covers every replica.
    """

    def __init__(self, query_budget: int | None = None) -> None:
        self.query_budget = (
            None if query_budget is None else check_int_at_least("query_budget", query_budget, 0)
        )
        self.query_count = 0
        self._ledger: Callable[[int], None] | None = None

    def charge_to(self, ledger: Callable[[int], None] | None) -> None:
        """Charge every query to ``ledger`` from now on (``None``: back to this counter's own budget).

        ``ledger(count)`` is called before ``count`` inputs are sent and raises
        :class:`QueryBudgetExceeded` to refuse them; this counter's own budget is then not consulted
        (the ledger holds what remains of it), its count still grows."""
        self._ledger = ledger

    @property
    def queries_remaining(self) -> int | None:
        """Inputs that may still be sent, or ``None`` without a budget."""
        return None if self.query_budget is None else max(self.query_budget - self.query_count, 0)

    def _charge(self, count: int) -> None:
        """Count ``count`` inputs about to be sent; raise :class:`QueryBudgetExceeded` first if they do not
        fit in the budget."""
        if getattr(self, "_ledger", None) is not None:
            self._ledger(count)
            self.query_count += count
            return
        if self.query_budget is not None and self.query_count + count > self.query_budget:
            raise QueryBudgetExceeded(
                f"query budget exhausted: {self.query_count} of {self.query_budget} queries used, "
                f"{count} more needed; nothing past the budget was classified"
            )
        self.query_count += count


class QueryOnlyClassifier(QueryCounter):
    """A function ``predict_fn(x) -> labels or scores`` on NumPy batches, as a checked labels function.

    :param predict_fn: takes a float32 array ``(batch, *input_shape)`` and returns ``(batch,)`` integer
        labels or ``(batch, nb_classes)`` scores (NumPy, lists or torch tensors).
    :param nb_classes: number of classes.
    :param output: ``"labels"``, ``"scores"`` or ``"auto"`` (1-D answers are labels, 2-D scores).
    :param batch_size: most inputs per call to ``predict_fn`` (``None``: the batches the caller gives).
    :param query_budget: most inputs ever sent; a call that would exceed it raises
        :class:`QueryBudgetExceeded` before calling ``predict_fn``.
    """

    def __init__(
        self,
        predict_fn: Callable[[np.ndarray], Any],
        nb_classes: int,
        *,
        output: str = "auto",
        batch_size: int | None = None,
        query_budget: int | None = None,
    ) -> None:
        if not callable(predict_fn):
            raise ValueError(f"predict_fn must be callable, got {type(predict_fn).__name__}")
        if output not in OUTPUT_KINDS:
            raise ValueError(f"output must be one of {OUTPUT_KINDS}, got {output!r}")
        super().__init__(query_budget)
        self.predict_fn = predict_fn
        self.nb_classes = check_int_at_least("nb_classes", nb_classes, 2)
        self.output = output
        self.batch_size = None if batch_size is None else check_int_at_least("batch_size", batch_size, 1)
        self.call_count = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Labels ``(len(x),)`` int64 of a NumPy batch; each input counts as one query."""
        x = np.asarray(x, dtype=np.float32)
        step = self.batch_size or max(len(x), 1)
        parts = [self._query(x[start : start + step]) for start in range(0, len(x), step)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _query(self, chunk: np.ndarray) -> np.ndarray:
        self._charge(len(chunk))
        self.call_count += 1
        return labels_from_output(
            self.predict_fn(chunk), len(chunk), self.nb_classes, self.output, who="query-only classifier"
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({getattr(self.predict_fn, '__name__', type(self.predict_fn).__name__)}, "
            f"nb_classes={self.nb_classes}, output={self.output!r}, queries={self.query_count})"
        )
