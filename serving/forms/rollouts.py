"""The form that starts a rollout on an endpoint's page: the candidate and the watch policy. It only
parses input; serving.services.start_rollout decides."""

from __future__ import annotations

from django import forms

from serving.models import Deployment
from serving.services.rollouts import (
    CANARY_PERCENT,
    JUDGE_FRACTION,
    MAX_ERROR_RATE_INCREASE,
    MAX_JUDGE_RUBRIC,
    MAX_LATENCY_RATIO,
    MIN_JUDGE_SAMPLES,
    MIN_JUDGE_SCORE,
    MIN_REQUESTS,
    WINDOW_SECONDS,
)


class RolloutForm(forms.Form):
    candidate = forms.ChoiceField(
        label="Candidate", help_text="A deployment of the endpoint's team, or one of its adapters."
    )
    canary_percent = forms.IntegerField(
        label="Canary share, %",
        min_value=CANARY_PERCENT[1],
        max_value=CANARY_PERCENT[2],
        initial=CANARY_PERCENT[0],
    )
    window_minutes = forms.IntegerField(
        label="Watch window, minutes",
        min_value=WINDOW_SECONDS[1] // 60,
        max_value=WINDOW_SECONDS[2] // 60,
        initial=WINDOW_SECONDS[0] // 60,
    )
    min_requests = forms.IntegerField(
        label="Canary requests needed to judge it (early rollback, promotion)",
        min_value=MIN_REQUESTS[1],
        max_value=MIN_REQUESTS[2],
        initial=MIN_REQUESTS[0],
    )
    max_error_points = forms.FloatField(
        label="Error rate above the baseline's, at most (points)",
        min_value=100 * MAX_ERROR_RATE_INCREASE[1],
        max_value=100 * MAX_ERROR_RATE_INCREASE[2],
        initial=100 * MAX_ERROR_RATE_INCREASE[0],
    )
    max_latency_ratio = forms.FloatField(
        label="p95 latency over the baseline's, at most (x)",
        min_value=MAX_LATENCY_RATIO[1],
        max_value=MAX_LATENCY_RATIO[2],
        initial=MAX_LATENCY_RATIO[0],
    )
    judge = forms.CharField(
        label="Judge endpoint (optional)",
        required=False,
        max_length=63,
        help_text="Scores a sample of the canary's answers (questions from the task's eval set); none: no judge.",
    )
    judge_rubric = forms.CharField(
        label="Judge's rubric",
        required=False,
        max_length=MAX_JUDGE_RUBRIC,
        widget=forms.Textarea(attrs={"rows": 2}),
    )
    judge_percent = forms.FloatField(
        label="Canary requests judged, %",
        required=False,
        min_value=100 * JUDGE_FRACTION[1],
        max_value=100 * JUDGE_FRACTION[2],
        initial=100 * JUDGE_FRACTION[0],
    )
    min_judge_score = forms.FloatField(
        label="Judge's mean score needed (0-1)",
        required=False,
        min_value=MIN_JUDGE_SCORE[1],
        max_value=MIN_JUDGE_SCORE[2],
        initial=MIN_JUDGE_SCORE[0],
    )
    min_judge_samples = forms.IntegerField(
        label="Judged samples before it decides",
        required=False,
        min_value=MIN_JUDGE_SAMPLES[1],
        max_value=MIN_JUDGE_SAMPLES[2],
        initial=MIN_JUDGE_SAMPLES[0],
    )

    def __init__(self, *args, deployments: list[Deployment], **kwargs):
        super().__init__(*args, **kwargs)
        choices = []
        for deployment in deployments:
            choices.append((deployment.name, f"{deployment.name} (base model)"))
            choices += [
                (f"{deployment.name}/{a.name}", f"{deployment.name} / {a.name}")
                for a in deployment.adapters.all()
            ]
        self.fields["candidate"].choices = choices

    def policy(self) -> dict:
        """The cleaned input as ``services.start_rollout`` takes it."""
        data = self.cleaned_data
        deployment, _, adapter = data["candidate"].partition("/")
        return {
            "deployment": deployment,
            "adapter": adapter or None,
            "canary_percent": data["canary_percent"],
            "window_seconds": data["window_minutes"] * 60,
            "min_requests": data["min_requests"],
            "max_error_rate_increase": data["max_error_points"] / 100,
            "max_latency_ratio": data["max_latency_ratio"],
        } | self._judge()

    def _judge(self) -> dict:
        data = self.cleaned_data
        if not data.get("judge"):
            return {}  # the judge's numbers keep their initial values in the form: without a judge, unused
        return {
            "judge": data["judge"].strip(),
            "judge_rubric": data.get("judge_rubric") or "",
            "judge_fraction": None if data.get("judge_percent") is None else data["judge_percent"] / 100,
            "min_judge_score": data.get("min_judge_score"),
            "min_judge_samples": data.get("min_judge_samples"),
        }
