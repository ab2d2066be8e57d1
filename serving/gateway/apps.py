from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "serving.gateway"
    label = "gateway"
    verbose_name = "Gateway"

    def ready(self) -> None:
        from portfolio.accounts import services as accounts

        accounts.LIVE_KEYS_OF.append(live_keys_of)


def live_keys_of(membership) -> tuple[list[dict], list[str]]:
    """The team's API keys ``membership``'s member created that are neither revoked nor expired: they stay
    live when the member leaves (the team's, billed to it) until an owner revokes them."""
    from django.utils import timezone

    from serving.gateway.models import ApiKey

    live = list(
        ApiKey.objects.filter(team_id=membership.team_id, created_by_id=membership.user_id, revoked_at=None)
        .exclude(expires_at__lte=timezone.now())
        .order_by("created_at", "id")
        .only("key_id", "name")
    )
    return [{"key_id": key.key_id, "name": key.name} for key in live], [
        f"{key.name} ({key.display_prefix})" for key in live
    ]
