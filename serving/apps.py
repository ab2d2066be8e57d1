from django.apps import AppConfig


class ServingConfig(AppConfig):
    name = "serving"
    label = "serving"
    verbose_name = "Serving"

    def ready(self) -> None:
        from portfolio.registry import services as registry_services
        from serving import agent_loop  # noqa: F401 - connects the node agent's signal handlers
        from serving.models import Deployment, DeploymentAdapter

        def deployed(version) -> str | None:
            names = list(Deployment.objects.filter(version=version).values_list("name", flat=True))
            names += [
                f"{a.deployment.name} (adapter {a.name})"
                for a in DeploymentAdapter.objects.filter(version=version).select_related("deployment")
            ]
            return f"it is deployed by {', '.join(names)}" if names else None

        registry_services.VERSION_IN_USE_CHECKS.append(deployed)
