"""The lineage drawing is bounded: a model's newest versions and the lineage of the version being viewed,
never all of them (a model of 2,000 versions made pages of 1.4 MB and 2,000 SVG nodes in seconds)."""

from __future__ import annotations

import pytest

from portfolio.registry import services
from portfolio.registry.choices import Source, VersionKind, VersionStatus, Visibility
from portfolio.registry.models import Model, ModelVersion
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db

NODE = 'class="lineage-node '
VERSIONS = 120
CAP = 40  # lineage.MAX_OWN_VERSIONS: the newest versions drawn


def _version(model: Model, number: int, **fields) -> ModelVersion:
    values = {"kind": VersionKind.BASE, "source": Source.LOCAL, "status": VersionStatus.READY}
    return ModelVersion.objects.create(model=model, number=number, **(values | fields))


@pytest.fixture
def fam(org, team, other_team) -> Model:
    """``fam`` of 120 versions: v1 a base; v2 derived from it; v3 an adapter of v2; v4 an adapter of
    another team's organisation-wide ``pub:v2`` (derived from ``pub:v1``); v5 an adapter of a private
    ``secret:v1``; v6 to v120 merged from v1."""
    fam = services.create_model(actor=actor_for(org["engineer"]), name="fam", owner_team=team)
    outsider = actor_for(org["outsider"])
    pub = services.create_model(
        actor=outsider, name="pub", owner_team=other_team, visibility=Visibility.ORGANISATION
    )
    secret = services.create_model(actor=outsider, name="secret", owner_team=other_team)
    pub_v2 = _version(pub, 2, parent_version=_version(pub, 1))
    v1 = _version(fam, 1)
    v2 = _version(fam, 2, parent_version=v1)
    _version(fam, 3, kind=VersionKind.ADAPTER, base_version=v2)
    _version(fam, 4, kind=VersionKind.ADAPTER, base_version=pub_v2)
    _version(fam, 5, kind=VersionKind.ADAPTER, base_version=_version(secret, 1))
    ModelVersion.objects.bulk_create(
        ModelVersion(model=fam, number=n, kind=VersionKind.BASE, source=Source.MERGE, parent_version=v1,
                     status=VersionStatus.READY)
        for n in range(6, VERSIONS + 1)
    )  # fmt: skip
    return fam


def _page(client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200
    return response.content.decode()


def test_the_model_page_draws_the_newest_versions_and_says_how_many_it_left_out(signed_in, org, fam):
    html = _page(signed_in(org["viewer"]), "/models/fam/")
    # The newest 40 and v1, which they were merged from.
    assert html.count(NODE) == CAP + 1
    assert f"{VERSIONS - CAP - 1} more versions not drawn" in html
    assert ">fam:v120<" in html and ">fam:v1<" in html and ">fam:v80<" not in html


def test_a_version_page_draws_its_own_lineage_however_old(signed_in, org, fam):
    client = signed_in(org["viewer"])
    html = _page(client, "/models/fam/v3/")
    # The newest 40, v1, and v3 with its base v2 (derived from v1).
    assert html.count(NODE) == CAP + 3
    assert ">fam:v3<" in html and ">fam:v2<" in html and ">fam:v1<" in html
    assert f"{VERSIONS - CAP - 3} more versions not drawn" in html and "the lineage of this one" in html
    # Across models: pub:v2 it is an adapter of, and pub:v1 that one was derived from.
    html = _page(client, "/models/fam/v4/")
    assert html.count(NODE) == CAP + 4 and ">pub:v2<" in html and ">pub:v1<" in html


def test_a_version_page_never_draws_a_base_the_viewer_may_not_see(signed_in, org, fam):
    html = _page(signed_in(org["viewer"]), "/models/fam/v5/")
    assert html.count(NODE) == CAP + 2 and "secret:" not in html


def test_a_few_versions_are_all_drawn_without_a_note(signed_in, org, team):
    model = services.create_model(actor=actor_for(org["engineer"]), name="small", owner_team=team)
    _version(model, 2, parent_version=_version(model, 1))
    html = _page(signed_in(org["viewer"]), "/models/small/v2/")
    assert html.count(NODE) == 2 and "not drawn" not in html


def test_the_api_gives_the_same_bound_and_says_how_many_it_left_out(client, org, fam):
    client.force_login(org["viewer"])
    answer = client.get("/api/v1/models/fam/lineage").json()
    assert len(answer["nodes"]) == CAP + 1 and answer["versions_not_drawn"] == VERSIONS - CAP - 1
    assert {"source", "target", "relation"} <= set(answer["edges"][0])
    answer = client.get("/api/v1/models/fam/lineage?version=3").json()
    labels = {node["label"] for node in answer["nodes"]}
    assert {"fam:v1", "fam:v2", "fam:v3"} <= labels and answer["versions_not_drawn"] == VERSIONS - CAP - 3
    assert client.get("/api/v1/models/fam/lineage?version=999").status_code == 404
