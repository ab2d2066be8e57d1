from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "portfolio.audit"
    label = "audit"
    verbose_name = "Audit trail"
