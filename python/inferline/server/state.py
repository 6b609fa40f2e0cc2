"""Flags the app shares with whoever runs it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServerState"]


@dataclass
class ServerState:
    """Flags shared by the app and whoever runs it (``serve`` sets them on SIGTERM).

    ``not_ready`` turns readiness (``/v2/health/ready`` and per-model ``ready``) false while
    inference requests are still accepted: the grace period in which a load balancer notices.
    ``draining`` also makes new inference requests answer 503 with ``Retry-After`` at once.
    """

    not_ready: bool = False
    draining: bool = False

    @property
    def ready(self) -> bool:
        return not (self.not_ready or self.draining)
