from django.urls import path

from portfolio.audit import views

urlpatterns = [
    path("", views.audit_log, name="audit-log"),
    path("export/", views.audit_export, name="audit-export"),
]
