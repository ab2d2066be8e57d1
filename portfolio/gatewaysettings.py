"""The gateway's settings, read from the environment (README "Configuration"); ``portfolio.settings`` takes
them in whole. Bounds on what one call may ask for, timeouts to the engines, metering's flush batch."""

from __future__ import annotations

from portfolio.envparse import Env

_env = Env()

GATEWAY_CONNECT_TIMEOUT = _env.integer("PORTFOLIO_GATEWAY_CONNECT_TIMEOUT", 3, minimum=1)
GATEWAY_UPSTREAM_TIMEOUT = _env.integer("PORTFOLIO_GATEWAY_UPSTREAM_TIMEOUT", 300, minimum=1)
GATEWAY_REFRESH_SECONDS = float(_env.integer("PORTFOLIO_GATEWAY_REFRESH_MS", 1000, minimum=100)) / 1000
# A replica to stop leaves the gateways' tables and finishes its requests in flight for at most this long
# before its node agent stops the engine (serving/draining.py); 0 stops it at once, cutting them.
REPLICA_DRAIN_SECONDS = _env.integer("PORTFOLIO_REPLICA_DRAIN_SECONDS", 30, minimum=0, maximum=600)
GATEWAY_MAX_BODY_BYTES = _env.integer("PORTFOLIO_GATEWAY_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024)
USAGE_FLUSH_BATCH = _env.integer("PORTFOLIO_USAGE_FLUSH_BATCH", 2000, minimum=1)
# Completions per prompt (n, best_of) no endpoint may exceed, whatever its own cap (Endpoint.max_n).
GATEWAY_MAX_N = _env.integer("PORTFOLIO_GATEWAY_MAX_N", 16, minimum=1, maximum=128)
# Prompts in one /v1/completions call, or inputs in one /v1/embeddings call.
GATEWAY_MAX_INPUTS = _env.integer("PORTFOLIO_GATEWAY_MAX_INPUTS", 2048, minimum=1, maximum=100_000)
GATEWAY_KEY_CACHE_SIZE = _env.integer("PORTFOLIO_GATEWAY_KEY_CACHE_SIZE", 10_000, minimum=16)
# Log-probabilities of prompt tokens one call may ask for (`prompt_logprobs`, `echo` with `logprobs`): the
# prompt's tokens at most, times 1 + k, per choice; each is some 70 bytes of the answer, read whole.
GATEWAY_MAX_PROMPT_LOGPROBS = _env.integer("PORTFOLIO_GATEWAY_MAX_PROMPT_LOGPROBS", 2_000_000, minimum=0)
# Images in a chat call (serving/gateway/images.py): how many, how big decoded, the tokens admission reserves
# for each where the registry does not know the model's own figure (0, the default: the model's context, the
# only bound an engine keeps whatever the image's size; set a figure only where every engine's image size is
# capped below it in its engine arguments), and
# the internal hosts (host or host:port) whose image URLs an engine may fetch; any other URL is refused.
GATEWAY_MAX_IMAGES = _env.integer("PORTFOLIO_GATEWAY_MAX_IMAGES", 8, minimum=0, maximum=256)
GATEWAY_MAX_IMAGE_BYTES = _env.integer("PORTFOLIO_GATEWAY_MAX_IMAGE_BYTES", 2 * 1024 * 1024, minimum=1024)
# Pixels an image's header may declare (width x height): its bytes do not bound what the engine decodes.
GATEWAY_MAX_IMAGE_PIXELS = _env.integer("PORTFOLIO_GATEWAY_MAX_IMAGE_PIXELS", 36_000_000, minimum=1)
GATEWAY_IMAGE_TOKENS = _env.integer("PORTFOLIO_GATEWAY_IMAGE_TOKENS", 0, minimum=0, maximum=1_000_000)
GATEWAY_IMAGE_HOSTS = [h.lower() for h in _env.csv_list("PORTFOLIO_GATEWAY_IMAGE_HOSTS", [])]
# Audio uploads (serving/gateway/audio.py): the multipart body, and the WAV's duration read from its header.
GATEWAY_MAX_AUDIO_BYTES = _env.integer("PORTFOLIO_GATEWAY_MAX_AUDIO_BYTES", 25 * 1024 * 1024, minimum=1024)
GATEWAY_MAX_AUDIO_SECONDS = _env.integer(
    "PORTFOLIO_GATEWAY_MAX_AUDIO_SECONDS", 600, minimum=1, maximum=86_400
)
# Rerank and score calls (serving/gateway/rerank.py): documents per call, characters per text.
GATEWAY_MAX_DOCUMENTS = _env.integer("PORTFOLIO_GATEWAY_MAX_DOCUMENTS", 256, minimum=1, maximum=10_000)
GATEWAY_MAX_DOCUMENT_CHARS = _env.integer("PORTFOLIO_GATEWAY_MAX_DOCUMENT_CHARS", 32_768, minimum=1)
# Bearer token Prometheus presents on /metrics; with none, /metrics answers 404.
METRICS_TOKEN = _env.text("PORTFOLIO_METRICS_TOKEN")
# The deployment page's prompt box, through the gateway: per user, across deployments.
PLAYGROUND_RPM = _env.integer("PORTFOLIO_PLAYGROUND_RPM", 20, minimum=1)
PLAYGROUND_TPM = _env.integer("PORTFOLIO_PLAYGROUND_TPM", 50_000, minimum=1)
