"""/review/: the inbox and decision pages (urls_inbox), the project, recovery and audit pages
(urls_project)."""
from django.urls import include, path

app_name = "review"

urlpatterns = [
    path("", include("review.urls_inbox")),
    path("", include("review.urls_project")),
]
