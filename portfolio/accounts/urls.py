from django.urls import path

from portfolio.accounts import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("login/", views.login_view, name="login"),
    path("login/sso/", views.sso_login, name="sso-login"),
    path("login/sso/callback/", views.sso_callback, name="sso-callback"),
    path("login/sso/backchannel-logout/", views.sso_backchannel_logout, name="sso-backchannel-logout"),
    path("logout/", views.logout_view, name="logout"),
    path("password/", views.password_change, name="password-change"),
    path("roles/", views.roles, name="roles"),
    path("departments/", views.department_list, name="department-list"),
    path("departments/new/", views.department_create, name="department-create"),
    path("departments/<int:pk>/", views.department_detail, name="department-detail"),
    path("departments/<int:pk>/edit/", views.department_edit, name="department-edit"),
    path("departments/<int:pk>/managers/", views.department_manager_add, name="department-manager-add"),
    path(
        "departments/<int:pk>/managers/<int:user_id>/remove/",
        views.department_manager_remove,
        name="department-manager-remove",
    ),
    path("teams/", views.team_list, name="team-list"),
    # TeamCreateForm reserves the address "new" so that no team page hides behind this route.
    path("teams/new/", views.team_create, name="team-create"),
    path("teams/<slug:slug>/", views.team_detail, name="team-detail"),
    path("teams/<slug:slug>/edit/", views.team_edit, name="team-edit"),
    path("teams/<slug:slug>/members/", views.member_add, name="member-add"),
    path("teams/<slug:slug>/members/<int:pk>/role/", views.member_role, name="member-role"),
    path("teams/<slug:slug>/members/<int:pk>/remove/", views.member_remove, name="member-remove"),
    path("users/", views.user_list, name="user-list"),
    path("users/new/", views.user_create, name="user-create"),
    path("users/<int:pk>/", views.user_detail, name="user-detail"),
    path("users/<int:pk>/roles/", views.user_roles, name="user-roles"),
    path("users/<int:pk>/deactivate/", views.user_deactivate, name="user-deactivate"),
    path("users/<int:pk>/reactivate/", views.user_reactivate, name="user-reactivate"),
    path("sso/mappings/", views.sso_mapping_list, name="sso-mapping-list"),
    path("sso/mappings/add/", views.sso_mapping_add, name="sso-mapping-add"),
    path("sso/mappings/<int:pk>/delete/", views.sso_mapping_delete, name="sso-mapping-delete"),
    path("tokens/", views.token_list, name="token-list"),
    path("tokens/new/", views.token_create, name="token-create"),
    path("tokens/<int:pk>/revoke/", views.token_revoke, name="token-revoke"),
]
