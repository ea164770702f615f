"""The baseline policy: deny everything in and out, allow what a Kubernetes node needs.

The policy lives in its own ``table inet <table>`` and every change replaces that
table, and only that table, in one nft transaction. Other tables (the ban table,
kube-proxy, Calico, Cilium, fail2ban) are never read for writing nor flushed.

Comparisons are always made between two listings that the kernel produced
(never between our script text and nft's listing), so that a different nft
version printing the same rules differently can neither hide drift nor make the
enforcer re-apply forever.

One module per job: ``policy`` (what a policy may be), ``render`` (its nft
script), ``drift`` (the live table and what changed), ``apply`` (checked apply,
rollback, diff), ``confirm`` (commit-confirmed), ``enforcer`` (keep it in force).
"""

from kfwguard.firewall.baseline import discover, drift, names
from kfwguard.firewall.baseline.apply import (
    StateFiles,
    apply,
    confirmation_received,
    desired_listing,
    diff,
    owned_table,
    remember_owned,
    remove_table,
    rollback,
    rollback_script,
    save_for_rollback,
    write_json_atomic,
)
from kfwguard.firewall.baseline.confirm import apply_confirmed, confirm
from kfwguard.firewall.baseline.drift import (
    ForeignChain,
    describe_drift,
    foreign_base_chains,
    live_listing,
    normalise_listing,
    snapshot,
)
from kfwguard.firewall.baseline.enforcer import BaselineEnforcer, BaselineStats
from kfwguard.firewall.baseline.policy import (
    CNI_PORTS,
    ICMP_TYPES,
    ICMPV6_TYPES,
    NODEPORTS,
    PRIORITY,
    RESERVED_TABLES,
    BaselineError,
    parse_failsafe,
    port_spec,
    ssh_session_cut,
    validate,
)
from kfwguard.firewall.baseline.render import render

__all__ = [
    "CNI_PORTS",
    "ICMPV6_TYPES",
    "ICMP_TYPES",
    "NODEPORTS",
    "PRIORITY",
    "RESERVED_TABLES",
    "BaselineEnforcer",
    "BaselineError",
    "BaselineStats",
    "ForeignChain",
    "StateFiles",
    "apply",
    "apply_confirmed",
    "confirm",
    "confirmation_received",
    "describe_drift",
    "desired_listing",
    "diff",
    "discover",
    "drift",
    "foreign_base_chains",
    "live_listing",
    "names",
    "normalise_listing",
    "owned_table",
    "parse_failsafe",
    "port_spec",
    "remember_owned",
    "remove_table",
    "render",
    "rollback",
    "rollback_script",
    "save_for_rollback",
    "snapshot",
    "ssh_session_cut",
    "validate",
    "write_json_atomic",
]
