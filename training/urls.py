from django.urls import path

from training.views import datasets, distillation, evals, jobs

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
    path("jobs/", jobs.job_list, name="job-list"),
    path("jobs/new/", jobs.job_create, name="job-create"),
    path("jobs/<int:job_id>/", jobs.job_detail, name="job-detail"),
    path("jobs/<int:job_id>/cancel/", jobs.job_cancel, name="job-cancel"),
    path("distillations/new/", distillation.distillation_create, name="distillation-create"),
    path("evals/", evals.eval_list, name="eval-list"),
]
