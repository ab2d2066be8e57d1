from django.urls import path

from training import views

urlpatterns = [
    path("", views.training_list, name="training-list"),
    path("datasets/new/", views.dataset_create, name="dataset-create"),
    path("datasets/<slug:team>/<str:name>/", views.dataset_detail, name="dataset-detail"),
    path("datasets/<slug:team>/<str:name>/upload/", views.dataset_upload, name="dataset-upload"),
    path("datasets/<slug:team>/<str:name>/v<int:number>/", views.dataset_version, name="dataset-version"),
    path("jobs/", views.job_list, name="job-list"),
    path("jobs/new/", views.job_create, name="job-create"),
    path("jobs/<int:job_id>/", views.job_detail, name="job-detail"),
    path("jobs/<int:job_id>/cancel/", views.job_cancel, name="job-cancel"),
]
