from django.contrib.auth.decorators import login_not_required
from django.http import JsonResponse
from django.urls import include, path
from django.views.generic import RedirectView

from portfolio.api import api, not_found


@login_not_required
def healthz(request):
    """Liveness for load balancers and compose health checks; reveals nothing."""
    return JsonResponse({"status": "ok"})


handler404 = not_found  # under /api/, in the API's error shape

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("api/v1/", api.urls),
    path(
        "api/docs",
        login_not_required(RedirectView.as_view(url="/api/v1/docs", permanent=False)),
        name="api-docs",
    ),
    path("", include("portfolio.accounts.urls")),
    path("audit/", include("portfolio.audit.urls")),
    path("billing/", include("portfolio.billing.urls")),
    path("models/", include("portfolio.registry.urls")),
    path("training/", include("training.urls")),
    path("portfolio/", include("training.portfolio_urls")),
    path("", include("serving.urls")),
    path("", include("serving.gateway.urls")),
]
