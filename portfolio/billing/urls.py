from django.urls import path

from portfolio.billing.views import exports

urlpatterns = [
    path(
        "departments/<int:department_id>/statements/<str:month>/export/<str:fmt>/",
        exports.statement_export,
        name="billing-statement-export",
    ),
]
