"""Which routes a model answers (EndpointInfo.serves, from its registry task), decided from the routing table
in memory: a call on another route is refused naming the right one, a fallback to another kind of model is
never followed, and an audio upload reserves its seconds at the costliest hop's price."""

from __future__ import annotations

import pytest

from serving.gateway import access, audio, intake
from serving.gateway.errors import GatewayError
from serving.gateway.routing import SERVES, EndpointInfo, Snapshot, price_micros
from tests.gateway.key_records import key_record

KEY = key_record(key_id="k")


def endpoint(name: str, serves: str = "text", fallback: str | None = None, **extra) -> EndpointInfo:
    return EndpointInfo(
        name=name,
        team_id=1,
        routes=(),
        fallback=fallback,
        input_micros_per_token=0.0,
        output_micros_per_token=0.0,
        max_model_len=512,
        embedding=serves == "embedding",
        serves=serves,
        **extra,
    )


def test_registry_tasks_map_to_the_routes_their_models_answer():
    assert (SERVES["speech"], SERVES["rerank"], SERVES["embedding"]) == ("speech", "score", "embedding")
    assert SERVES.get("chat", "text") == "text"


@pytest.mark.parametrize(
    ("serves", "kind", "named"),
    [
        ("speech", "chat", "/v1/audio/transcriptions"),
        ("score", "completion", "/v1/rerank"),
        ("text", "rerank", "/v1/chat/completions"),
        ("embedding", "score", "/v1/embeddings"),
        ("text", "transcription", "/v1/chat/completions"),
        ("speech", "embedding", "/v1/audio/transcriptions"),
    ],
)
def test_a_call_on_a_route_the_model_does_not_answer_names_the_routes_it_does(serves, kind, named):
    with pytest.raises(GatewayError) as excinfo:
        intake.check_serves(kind, endpoint("m", serves), "m")
    assert excinfo.value.code == "unsupported_endpoint" and named in excinfo.value.message


def test_a_fallback_to_another_kind_of_model_is_not_followed():
    snapshot = Snapshot(
        endpoints={
            "whisper": endpoint("whisper", "speech", fallback="whisper-2"),
            "whisper-2": endpoint("whisper-2", "speech", fallback="chatty"),
            "chatty": endpoint("chatty"),
        }
    )
    chain = access.chain(snapshot, KEY, snapshot.endpoints["whisper"], 0, chat=False, cut_fallbacks=set())
    assert [hop.name for hop in chain] == ["whisper", "whisper-2"]


def test_audio_is_reserved_and_priced_per_second_rounded_up_only_in_the_reservation():
    hop = endpoint("whisper", "speech", audio_micros_per_second=100.0)  # 0.0001 a second
    assert audio.audio_cost(hop, 2501) == 251
    assert price_micros(hop, 0, 0, 2501) == 250
