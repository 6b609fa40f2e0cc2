"""Errors raised by inferline. Every accepted request ends in a result or one of these."""

from __future__ import annotations

__all__ = [
    "DeadlineExceeded",
    "EngineStopped",
    "InferlineError",
    "InvalidInput",
    "ModelError",
    "ModelNotFound",
    "ModelNotReady",
    "QueueFullError",
]


class InferlineError(Exception):
    """Base class of every error inferline raises for a request."""


class QueueFullError(InferlineError):
    """The model's queue is at its bound; the request was refused at once (HTTP 503)."""


class DeadlineExceeded(InferlineError, TimeoutError):
    """The request's timeout passed while it was queued or computing (HTTP 504)."""


class InvalidInput(InferlineError, ValueError):
    """The input does not match the model's signature (HTTP 400)."""


class ModelError(InferlineError):
    """The model raised or returned output that breaks its signature; only its batch fails."""


class EngineStopped(InferlineError):
    """The engine is draining or stopped and does not take new work (HTTP 503)."""


class ModelNotFound(InferlineError, KeyError):
    """No model (or version, or alias) of that name is registered (HTTP 404)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelNotReady(InferlineError):
    """The model exists but is not ready (loading, warming, failed or draining) (HTTP 503)."""
