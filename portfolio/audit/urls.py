from django.urls import path

from portfolio.audit import views

urlpatterns = [
    path("", views.audit_log, name="audit-log"),
    path("export/", views.audit_export, name="audit-export"),
    path("signing-keys/<slug:key_id>.pem", views.audit_public_key, name="audit-public-key"),
]
