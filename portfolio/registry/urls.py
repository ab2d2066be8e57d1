from django.urls import path

from portfolio.registry import views

urlpatterns = [
    path("", views.model_list, name="model-list"),
    # ModelCreateForm reserves the name "new" so that no model page hides behind this route.
    path("new/", views.model_create, name="model-create"),
    path("<str:name>/", views.model_detail, name="model-detail"),
    path("<str:name>/edit/", views.model_edit, name="model-edit"),
    path("<str:name>/import/", views.model_import, name="model-import"),
    path("<str:name>/upload/", views.adapter_upload, name="adapter-upload"),
    path("<str:name>/compare/", views.model_compare, name="model-compare"),
    path("<str:name>/aliases/<str:alias>/remove/", views.alias_remove, name="alias-remove"),
    path("<str:name>/v<int:number>/", views.version_detail, name="version-detail"),
    path("<str:name>/v<int:number>/progress/", views.version_progress, name="version-progress"),
    path("<str:name>/v<int:number>/promote/", views.version_promote, name="version-promote"),
    path("<str:name>/v<int:number>/archive/", views.version_archive, name="version-archive"),
    path("<str:name>/v<int:number>/purge/", views.version_purge, name="version-purge"),
    path("<str:name>/v<int:number>/verify/", views.version_verify, name="version-verify"),
    path("<str:name>/v<int:number>/merge/", views.version_merge, name="version-merge"),
    path(
        "<str:name>/v<int:number>/chat-template/", views.version_chat_template, name="version-chat-template"
    ),
]
