from django.urls import path

from serving import views

# Pool, deployment and endpoint forms reserve the name "new" so that no page hides behind these routes.
urlpatterns = [
    path("pools/", views.pool_list, name="pool-list"),
    path("pools/new/", views.pool_create, name="pool-create"),
    path("nodes/<str:name>/state/", views.node_state, name="node-state"),
    path("deployments/", views.deployment_list, name="deployment-list"),
    path("deployments/new/", views.deployment_create, name="deployment-create"),
    path("deployments/<str:name>/", views.deployment_detail, name="deployment-detail"),
    path("deployments/<str:name>/scale/", views.deployment_scale, name="deployment-scale"),
    path("deployments/<str:name>/stop/", views.deployment_stop, name="deployment-stop"),
    path("deployments/<str:name>/restart/", views.deployment_restart, name="deployment-restart"),
    path("deployments/<str:name>/update/", views.deployment_update, name="deployment-update"),
    path("deployments/<str:name>/delete/", views.deployment_delete, name="deployment-delete"),
    path(
        "deployments/<str:name>/update-strategy/",
        views.deployment_update_strategy,
        name="deployment-update-strategy",
    ),
    path(
        "deployments/<str:name>/replace-in-place/",
        views.deployment_replace_in_place,
        name="deployment-replace-in-place",
    ),
    path("deployments/<str:name>/adapters/", views.adapter_add, name="deployment-adapter-add"),
    path(
        "deployments/<str:name>/adapters/<str:adapter>/remove/",
        views.adapter_remove,
        name="deployment-adapter-remove",
    ),
    path("deployments/<str:name>/try/", views.deployment_try, name="deployment-try"),
    path("endpoints/", views.endpoint_list, name="endpoint-list"),
    path("endpoints/new/", views.endpoint_create, name="endpoint-create"),
    path("endpoints/<str:name>/", views.endpoint_detail, name="endpoint-detail"),
    path("endpoints/<str:name>/routes/", views.endpoint_routes, name="endpoint-routes"),
    path("endpoints/<str:name>/config/", views.endpoint_config, name="endpoint-config"),
    path("endpoints/<str:name>/delete/", views.endpoint_delete, name="endpoint-delete"),
    path("endpoints/<str:name>/shares/", views.endpoint_share, name="endpoint-share"),
    path("endpoints/<str:name>/rollouts/", views.rollout_start, name="endpoint-rollout-start"),
    path("endpoints/<str:name>/rollouts/abort/", views.rollout_abort, name="endpoint-rollout-abort"),
    path(
        "endpoints/<str:name>/shares/<int:share_id>/remove/",
        views.endpoint_unshare,
        name="endpoint-unshare",
    ),
]
