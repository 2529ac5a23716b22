"""The FinOps project package: settings, the Celery app, URLs and logging."""

from .celery import app as celery_app

__all__ = ("celery_app",)
