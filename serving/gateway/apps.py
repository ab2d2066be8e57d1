from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "serving.gateway"
    label = "gateway"
    verbose_name = "Gateway"
