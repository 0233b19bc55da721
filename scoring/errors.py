"""The scoring core's errors: bad input, an unusable model, an engine that cannot run here."""

from __future__ import annotations


class RerankError(ValueError):
    """A bad input to the reranker; the message names the field and the limit."""


class ModelLoadError(RuntimeError):
    """The configured model cannot be loaded or is not a usable ranking model."""


class BackendError(RuntimeError):
    """An engine cannot run this checkpoint here (not installed, no native support, export failed)."""


class Cancelled(RuntimeError):
    """The request's work was cancelled (its client went away); its pending batches were dropped."""


class LimitExceeded(RerankError):
    """The input is over a configured size limit (more documents than ``RERANK_MAX_DOCUMENTS``)."""
