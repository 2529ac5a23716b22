"""The catalogue: every rule in the order that decides which one reports a resource (see `Rule.group`)."""

from .base import Rule
from .commitments import CommitmentCoverage, UnusedCommitment
from .compute import IdleDatabases, IdleInstances, PreviousGeneration, Rightsizing, StoppedInstances
from .hygiene import BilledAfterTermination, IdleResources, UntaggedSpend
from .network import IdleLoadBalancers, UnassociatedIps
from .storage import OldSnapshots, OrphanedSnapshots, UnattachedVolumes

# Catalogue order is priority order within a group.
RULES: tuple[Rule, ...] = (
    BilledAfterTermination(),
    IdleInstances(),
    IdleDatabases(),
    StoppedInstances(),
    Rightsizing(),
    PreviousGeneration(),
    UnattachedVolumes(),
    OrphanedSnapshots(),
    OldSnapshots(),
    UnassociatedIps(),
    IdleLoadBalancers(),
    IdleResources(),
    UntaggedSpend(),
    CommitmentCoverage(),
    UnusedCommitment(),
)
RULES_BY_NAME = {rule.name: rule for rule in RULES}


def rules_catalogue() -> list[dict]:
    """The rules with their descriptions and current thresholds (API, admin, README)."""
    return [
        {
            "name": rule.name,
            "title": rule.title,
            "description": rule.description,
            "saving_estimate": rule.saving,
            "thresholds": rule.thresholds(),
            "group": rule.group,
        }
        for rule in RULES
    ]


# --- The run ------------------------------------------------------------------------------------------------
