"""Every serving change goes through here, with its audit row in the same transaction; the reconcile
that acts on it is enqueued on commit. One module per topic; callers use this package's names."""

from serving.services.composite import configure_endpoint
from serving.services.deployments import (
    add_adapter,
    create_deployment,
    delete_deployment,
    remove_adapter,
    replace_in_place,
    restart,
    scale,
    set_update_strategy,
)
from serving.services.endpoints import (
    MAX_N_CEILING,
    MAX_N_DEFAULT,
    create_endpoint,
    delete_endpoint,
    set_routes,
    share_endpoint,
    unshare_endpoint,
)
from serving.services.pools import create_pool, set_node_state, update_pool
from serving.services.rollouts import abort_rollout, start_rollout
from serving.services.sharing import require_pool_open_to, require_usable_by

__all__ = [
    "MAX_N_CEILING",
    "MAX_N_DEFAULT",
    "add_adapter",
    "configure_endpoint",
    "create_deployment",
    "create_endpoint",
    "create_pool",
    "delete_deployment",
    "delete_endpoint",
    "remove_adapter",
    "replace_in_place",
    "require_pool_open_to",
    "require_usable_by",
    "restart",
    "scale",
    "set_node_state",
    "set_update_strategy",
    "start_rollout",
    "abort_rollout",
    "set_routes",
    "share_endpoint",
    "unshare_endpoint",
    "update_pool",
]
