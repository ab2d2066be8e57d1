"""Evaluation as a first-class activity: tasks (``Task``), their eval sets (``EvalSet``: a dataset version's
held-out rows, or all its rows), and eval runs of endpoints through the gateway (``EndpointEvalRun``), with
a leaderboard per eval set.

- ``models``: the three models (imported by ``training.models``, where Django finds them).
- ``catalogue``: creating tasks and eval sets, audited.
- ``runs``: starting, cancelling and running an endpoint's eval run (the worker's part).
- ``gateway``: the one place that calls an endpoint through the gateway (a service key of the running team,
  so every call is metered and billed to it, as distillation does).
- ``metrics``: pure functions: accuracy, F1 per label, exact match, containment, percentiles, cost.
- ``leaderboard``: every candidate's latest run on an eval set, and the quality/cost front.
- ``api``: the REST endpoints.
"""
