"""Optimisation recommendations: a catalogue of waste rules over the FOCUS cost lines and the resource inventory.

Each rule is a small class (name, description, the settings that are its thresholds, how it estimates the
saving) that returns findings for every account in scope at once: one SQL query per rule, or one query
plus a pass over its rows in Python — never a query per resource. Inventory rules read Resource rows
exactly as the connectors fill them (providers_app/connectors/base.py: RESOURCE_KINDS and
RESOURCE_ATTRIBUTES). Savings come from the resource's recent cost lines (EffectiveCost, the amortised
cost actually incurred); when the cost data has no line for it, from the small list-price table in
cloud_prices.py, and the recommendation says which (`saving_basis`).

The window of each account is the last OPTIMIZATION_LOOKBACK_DAYS up to its latest day with cost data
(data arrives late, so the wall clock is not the reference); inventory ages (stopped since, created at)
are measured against `now`.

A resource gets at most one recommendation from the rules that share a `group`, the first in catalogue
order (an idle instance is not also a rightsizing candidate). Findings are upserted as one Recommendation
per rule × account × provider_resource_id: open ones are refreshed, ones the rules no longer find are
closed with the reason why; dismissed and done ones keep the user's decision (their numbers are still
refreshed), and a closed one that applies again reopens. Done ones get their realised saving measured
(services/recommendations.py).
"""

from .base import CENT, DAYS_PER_MONTH, Context, Finding, Rule, Windows, _cents
from .catalogue import RULES, RULES_BY_NAME, rules_catalogue
from .refresh import OptimizationResult, analysis_windows, recommendations_refresh

__all__ = [
    "CENT",
    "DAYS_PER_MONTH",
    "RULES",
    "RULES_BY_NAME",
    "Context",
    "Finding",
    "OptimizationResult",
    "Rule",
    "Windows",
    "_cents",
    "analysis_windows",
    "recommendations_refresh",
    "rules_catalogue",
]
