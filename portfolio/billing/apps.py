from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "portfolio.billing"
    label = "billing"
