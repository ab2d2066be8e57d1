from django.urls import path

from training.views import datasets, distillation, evals, jobs, tasks

urlpatterns = [
    path("", datasets.training_list, name="training-list"),
    path("datasets/new/", datasets.dataset_create, name="dataset-create"),
    path("datasets/<slug:team>/<str:name>/", datasets.dataset_detail, name="dataset-detail"),
    path("datasets/<slug:team>/<str:name>/upload/", datasets.dataset_upload, name="dataset-upload"),
    path(
        "datasets/<slug:team>/<str:name>/uploads/<int:ingest_id>/",
        datasets.dataset_ingest,
        name="dataset-ingest",
    ),
    path("datasets/<slug:team>/<str:name>/v<int:number>/", datasets.dataset_version, name="dataset-version"),
    path(
        "datasets/<slug:team>/<str:name>/v<int:number>/archive/",
        datasets.dataset_version_archive,
        name="dataset-version-archive",
    ),
    path(
        "datasets/<slug:team>/<str:name>/v<int:number>/purge/",
        datasets.dataset_version_purge,
        name="dataset-version-purge",
    ),
    path("jobs/", jobs.job_list, name="job-list"),
    path("jobs/new/", jobs.job_create, name="job-create"),
    path("jobs/new/targets/", jobs.job_targets, name="job-targets"),
    path("jobs/<int:job_id>/", jobs.job_detail, name="job-detail"),
    path("jobs/<int:job_id>/cancel/", jobs.job_cancel, name="job-cancel"),
    path("distillations/new/", distillation.distillation_create, name="distillation-create"),
    path("evals/", evals.eval_list, name="eval-list"),
    path("tasks/", tasks.task_list, name="task-list"),
    path("tasks/new/", tasks.task_create, name="task-create"),
    path("tasks/<int:task_id>/", tasks.task_detail, name="task-detail"),
    path("tasks/<int:task_id>/eval-sets/", tasks.task_eval_set_add, name="task-eval-set-add"),
    path(
        "tasks/<int:task_id>/eval-sets/<int:eval_set_id>/delete/",
        tasks.task_eval_set_delete,
        name="task-eval-set-delete",
    ),
    path("tasks/<int:task_id>/runs/", tasks.task_run_start, name="task-run-start"),
    path("tasks/<int:task_id>/compare/", tasks.task_compare, name="task-compare"),
    path("eval-runs/<int:run_id>/", tasks.eval_run_detail, name="eval-run-detail"),
    path("eval-runs/<int:run_id>/cancel/", tasks.eval_run_cancel, name="eval-run-cancel"),
]
