from django.apps import AppConfig


class ServingConfig(AppConfig):
    name = "serving"
    label = "serving"
    verbose_name = "Serving"

    def ready(self) -> None:
        from portfolio.registry import services as registry_services
        from serving import agent_loop  # noqa: F401 - connects the node agent's signal handlers
        from serving.models import Deployment, DeploymentAdapter
        from serving.services.rollouts import follow_promotion

        def served_by(deployments, adapters, team_id: int) -> str | None:
            """Names the model's own team's deployments (whoever changes it holds model.register over it) and
            counts other teams' (a shared model's users are not the changer's to learn of)."""
            names, others = [], 0
            serving = [(d, d.name) for d in deployments] + [
                (a.deployment, f"{a.deployment.name} (adapter {a.name})")
                for a in adapters.select_related("deployment")
            ]
            for deployment, name in serving:
                if deployment.owner_team_id == team_id:
                    names.append(name)
                else:
                    others += 1
            if others:
                names.append(f"{others} deployment{'s' if others > 1 else ''} of other teams")
            return f"it is deployed by {', '.join(names)}" if names else None

        def deployed(version) -> str | None:
            return served_by(
                Deployment.objects.filter(version=version),
                DeploymentAdapter.objects.filter(version=version),
                version.model.owner_team_id,
            )

        def model_deployed(model) -> str | None:
            return served_by(
                Deployment.objects.filter(version__model=model),
                DeploymentAdapter.objects.filter(version__model=model),
                model.owner_team_id,
            )

        registry_services.VERSION_IN_USE_CHECKS.append(deployed)
        registry_services.MODEL_IN_USE_CHECKS.append(model_deployed)
        registry_services.PROMOTION_FOLLOWERS.append(follow_promotion)
        self._register_priced_subjects()

    @staticmethod
    def _register_priced_subjects() -> None:
        """Tell billing's price book how to find what serving owns: endpoints (tokens) and pools (compute)."""
        from django.db.models import Q

        from portfolio.billing import subjects
        from portfolio.billing.choices import PriceKind
        from serving.choices import EndpointKind
        from serving.models import ComputePool, Endpoint

        def finder(model, kind):
            def find(name: str):
                found = model.objects.filter(name=name).values_list("pk", "name").first()
                return subjects.Subject(kind, str(found[0]), found[1]) if found else None

            return find

        def lister(model, kind):
            def listing(actor=None):
                # What the actor may see, as everywhere (another team's private endpoint's name is not theirs
                # to learn); all of them without one (the admins' price form). A department manager reads the
                # billing of their departments' teams, in none of which they may be: those teams' endpoints.
                found = model.objects.all() if actor is None else model.objects.visible_to(actor)
                if actor is not None and model is Endpoint and actor.managed_department_ids:
                    found = Endpoint.objects.filter(
                        Q(pk__in=found.values("pk"))
                        | Q(owner_team__department_id__in=actor.managed_department_ids)
                    )
                return [subjects.Subject(kind, str(pk), name) for pk, name in found.values_list("pk", "name")]

            return listing

        # Each hop of a router, cascade or vote is metered and charged at its own plain endpoint's price: no
        # usage row ever names the composite, so a price of its own would be in force and never charged.
        priced = Q(kind=EndpointKind.PLAIN)

        def composite_refusal(subject) -> str | None:
            kind = (
                Endpoint.objects.filter(pk=subject.id).exclude(priced).values_list("kind", flat=True).first()
            )
            if kind is None:
                return None
            return (
                f"{subject.name} is a {kind} endpoint: each of its calls is charged at the prices of the plain "
                "endpoints its hops call. Price those."
            )

        def plain_endpoints() -> list:
            found = Endpoint.objects.filter(priced).values_list("pk", "name")
            return [subjects.Subject(PriceKind.ENDPOINT, str(pk), name) for pk, name in found]

        for model, kind in ((Endpoint, PriceKind.ENDPOINT), (ComputePool, PriceKind.POOL)):
            subjects.register(
                kind,
                find=finder(model, kind),
                listing=lister(model, kind),
                refusal=composite_refusal if model is Endpoint else None,
                priceable=plain_endpoints if model is Endpoint else None,
            )
