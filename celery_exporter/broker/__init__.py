"""Talking to the broker: where it is, how to connect, and how to measure its queues."""

from .connection import Broker, celery_app, is_auth_failure, is_tls_failure

__all__ = ["Broker", "celery_app", "is_auth_failure", "is_tls_failure"]
