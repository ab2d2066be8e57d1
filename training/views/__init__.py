"""Web pages of training, one module per topic: ``datasets`` (the list, uploads with line-numbered errors,
a version's statistics and rows), ``jobs`` (fine-tuning jobs: the list, the start form, a job's live
progress), ``distillation`` (the start form of a distillation from a teacher endpoint), ``evals``
(eval runs and the base-versus-result comparison) and ``tasks`` (tasks, their eval sets and leaderboards, eval runs
of endpoints).

Every view decides access with the gate: what the actor may not see answers 404 (``gate.get_visible``),
a change needs ``training.run`` (owner or engineer of the object's team), else 403; each view's docstring
says which. Changes go through ``training.services`` and ``training.finetune``.
"""
