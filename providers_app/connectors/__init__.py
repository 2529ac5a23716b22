"""Connectors: one adapter per cloud (and for FOCUS files) behind the CostSource / ResourceSource interface."""

from .base import CostBatch, CostSource, ResourceSource, RuleReport, get_cost_source, get_resource_source

__all__ = ["CostBatch", "CostSource", "ResourceSource", "RuleReport", "get_cost_source", "get_resource_source"]
