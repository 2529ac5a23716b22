"""Dates and times as the admin shows them: ISO-like, to the second (runs, alerts and schedules are read by the
second); the locale's default ("Dec. 6, 2026, 8:13 p.m.") hides seconds. Times are UTC (TIME_ZONE)."""

DATETIME_FORMAT = "Y-m-d H:i:s"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
