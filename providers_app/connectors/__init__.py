"""Connectors: one adapter per cloud (and for FOCUS files) behind the CostSource / ResourceSource interface."""

from .base import (
    ConnectionReport,
    CostBatch,
    CostSource,
    ResourceSource,
    RuleReport,
    connection_check,
    get_cost_source,
    get_resource_source,
)

__all__ = [
    "ConnectionReport",
    "CostBatch",
    "CostSource",
    "ResourceSource",
    "RuleReport",
    "connection_check",
    "get_cost_source",
    "get_resource_source",
]
