"""Web pages of serving: compute pools and their nodes' capacity (``pools``), deployments with their
replicas, timeline, engine logs and prompt box (``deployments``) and the buttons that change them
(``deployment_actions``), and endpoints with their weighted routes and shares (``endpoints``).

Every view decides access with the gate: lists start from ``gate.visible``, an object the actor may not
see answers 404 (``gate.get_visible``), a change needs its capability (``gate.require``), else 403; the
docstrings say which. Changes go through ``serving.services``; a ``DomainError`` becomes a form error or
a message, while ``NotFound`` and ``Forbidden`` propagate to Django's 404 and 403 pages.

The views are named here for ``serving.urls``.
"""

from serving.views.deployment_actions import (
    adapter_add,
    adapter_remove,
    deployment_delete,
    deployment_replace_in_place,
    deployment_restart,
    deployment_scale,
    deployment_stop,
    deployment_try,
    deployment_update,
    deployment_update_strategy,
)
from serving.views.deployments import deployment_create, deployment_detail, deployment_list
from serving.views.endpoints import (
    endpoint_config,
    endpoint_create,
    endpoint_delete,
    endpoint_detail,
    endpoint_list,
    endpoint_routes,
    endpoint_share,
    endpoint_unshare,
)
from serving.views.pools import node_state, pool_create, pool_list
from serving.views.rollouts import rollout_abort, rollout_start

__all__ = [
    "adapter_add",
    "adapter_remove",
    "deployment_create",
    "deployment_delete",
    "deployment_detail",
    "deployment_list",
    "deployment_replace_in_place",
    "deployment_restart",
    "deployment_scale",
    "deployment_stop",
    "deployment_try",
    "deployment_update",
    "endpoint_config",
    "deployment_update_strategy",
    "endpoint_create",
    "endpoint_delete",
    "endpoint_detail",
    "endpoint_list",
    "endpoint_routes",
    "endpoint_share",
    "endpoint_unshare",
    "node_state",
    "pool_create",
    "pool_list",
    "rollout_abort",
    "rollout_start",
]
