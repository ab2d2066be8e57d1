"""The portfolio page's URLs, mounted at /portfolio/ (portfolio/urls.py)."""

from django.urls import path

from training.views import portfolio

urlpatterns = [
    path("", portfolio.portfolio_page, name="portfolio"),
    path("tasks/<int:task_id>/production/", portfolio.portfolio_production, name="portfolio-production"),
    path("tasks/<int:task_id>/canary/", portfolio.portfolio_canary, name="portfolio-canary"),
]
