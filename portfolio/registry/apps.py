from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "portfolio.registry"
    label = "registry"
