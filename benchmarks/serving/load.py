"""What one engine does under load: completion tokens per second at a fixed concurrency, straight to the
engine (its bearer key, no gateway: the figure is the engine's), and the memory its process tree holds."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import psutil

from portfolio import direct_http

PROMPTS = [
    "I was charged twice for my subscription this month.",
    "The app crashes when I open the settings page.",
    "How do I change the email address on my account?",
    "My parcel has not arrived after two weeks.",
    "Can I get a refund for the annual plan?",
    "The login page says my password is wrong but it is not.",
    "Please delete my account and all my data.",
    "The tracking number you sent does not work.",
]


@dataclass(frozen=True)
class Throughput:
    tokens_per_second: float
    requests: int
    completion_tokens: int
    seconds: float

    def as_dict(self) -> dict:
        return {
            "tokens_per_second": round(self.tokens_per_second, 1),
            "requests": self.requests,
            "completion_tokens": self.completion_tokens,
            "seconds": round(self.seconds, 2),
        }


def complete(client: httpx.Client, url: str, model: str, prompt: str, max_tokens: int) -> int:
    """One greedy completion of exactly ``max_tokens`` tokens (``ignore_eos``): its completion tokens."""
    response = client.post(
        f"{url}/v1/completions",
        json={
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
        },
    )
    response.raise_for_status()
    return int(response.json()["usage"]["completion_tokens"])


def throughput(
    url: str,
    key: str,
    models: list[str],
    *,
    concurrency: int = 8,
    waves: int = 3,
    max_tokens: int = 32,
    warm_up: int = 3,
) -> Throughput:
    """``waves`` rounds of ``concurrency`` requests at once, the ``models`` taken in turn (one: the base or
    one adapter; several: adapters mixed), after ``warm_up`` unmeasured rounds (a fresh vLLM CPU engine is
    slow for its first batches: one round was not enough)."""
    headers = {"Authorization": f"Bearer {key}"}
    with (
        httpx.Client(headers=headers, timeout=600, **direct_http.httpx_options()) as client,
        ThreadPoolExecutor(concurrency) as pool,
    ):

        def wave() -> int:
            calls = [
                pool.submit(
                    complete, client, url, models[i % len(models)], PROMPTS[i % len(PROMPTS)], max_tokens
                )
                for i in range(concurrency)
            ]
            return sum(call.result() for call in calls)

        for _ in range(warm_up):  # also loads an adapter into the engine's LoRA slots
            wave()
        started = time.monotonic()
        tokens = sum(wave() for _ in range(waves))
        seconds = time.monotonic() - started
    return Throughput(tokens / seconds, waves * concurrency, tokens, seconds)


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its children (vLLM CPU runs its engine core in a child)."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def greedy_answers(url: str, key: str, model: str, prompts: list[str], max_tokens: int = 16) -> list[str]:
    """Temperature-0 chat answers, for comparing a merged version with its dynamic adapter."""
    answers = []
    with httpx.Client(
        headers={"Authorization": f"Bearer {key}"}, timeout=600, **direct_http.httpx_options()
    ) as client:
        for prompt in prompts:
            response = client.post(
                f"{url}/v1/completions",
                json={"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
            )
            response.raise_for_status()
            answers.append(response.json()["choices"][0]["text"])
    return answers
