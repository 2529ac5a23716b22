"""JSON log lines that always carry the correlation id and, inside a task, its name and id."""

import logging

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from . import correlation


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = correlation.get()
        try:
            from celery import current_task

            task = current_task
            if task and task.request and task.request.id:
                record.task_id = task.request.id
                record.task_name = task.name
                if record.correlation_id is None:
                    record.correlation_id = getattr(task.request, correlation.TASK_HEADER, None)
        except Exception:  # logging must never fail because of context lookup
            pass
        return True


class JsonFormatter(_JsonFormatter):
    def add_fields(self, log_record, record, message_dict):
        super().add_fields(log_record, record, message_dict)
        log_record.setdefault("correlation_id", getattr(record, "correlation_id", None))
