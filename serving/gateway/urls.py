from django.urls import path

from serving.gateway import views

urlpatterns = [
    path("keys/", views.key_list, name="apikey-list"),
    path("keys/new/", views.key_create, name="apikey-create"),
    path("keys/<int:pk>/edit/", views.key_edit, name="apikey-edit"),
    path("keys/<int:pk>/revoke/", views.key_revoke, name="apikey-revoke"),
    path("keys/policy/<slug:slug>/", views.key_policy, name="apikey-policy"),
    path("usage/", views.usage, name="usage"),
]
