"""The project, recovery and audit pages (issue 11): /review/projects/ (the list), /review/projects/<id>,
/review/recovery/<id>, /review/audit/."""
from django.urls import path

from review import views_project as views

urlpatterns = [
    path("projects/", views.project_list, name="projects"),
    path("projects/<uuid:project_id>", views.project_detail, name="project"),
    path("projects/<uuid:project_id>/stop", views.project_stop, name="project_stop"),
    path("projects/<uuid:project_id>/recovery", views.recovery_start_view, name="recovery_start"),
    path("recovery/<uuid:session_id>", views.recovery_detail, name="recovery"),
    path("recovery/<uuid:session_id>/steps/<uuid:step_id>/decide", views.recovery_step_decide,
         name="recovery_step_decide"),
    path("audit/", views.audit_log, name="audit"),
]
