"""JSON answers for API paths that no view handles, and the health endpoint."""
from django.db import connection
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import error_body
from core.models import Heartbeat


@csrf_exempt  # any method on an unknown API path is a JSON 404, not a CSRF page
def api_not_found(request, *args, **kwargs):
    return JsonResponse(error_body("not_found", "No such endpoint."), status=404)


def bad_request(request, exception=None):
    """handler400 (for example a Host header not in DJANGO_ALLOWED_HOSTS): JSON for the API."""
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("invalid", "Bad request.", fields={"request": ["Bad request."]}), status=400)
    from django.views.defaults import bad_request as default

    return default(request, exception)


def server_error(request, *args, **kwargs):
    """handler500: JSON for the API, so even a bug keeps the error shape."""
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("server_error", "Internal server error."), status=500)
    from django.views.defaults import server_error as default

    return default(request)


def not_found(request, exception=None):
    if request.path.startswith("/api/"):
        return api_not_found(request)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


class HealthApi(APIView):
    """Liveness of the database and of Celery beat + worker (the heartbeat task's last run)."""

    permission_classes = [AllowAny]
    authentication_classes = []

    @extend_schema(
        responses=inline_serializer(
            name="Health",
            fields={
                "database": serializers.CharField(),
                "heartbeat": serializers.DateTimeField(allow_null=True,
                                                       help_text="last run of the beat heartbeat task"),
                "heartbeat_age_seconds": serializers.FloatField(allow_null=True),
            },
        ),
        auth=[],
    )
    def get(self, request):
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        beat = Heartbeat.objects.filter(name="beat").first()
        return Response({
            "database": connection.vendor,
            "heartbeat": beat.last_seen if beat else None,
            "heartbeat_age_seconds": round((timezone.now() - beat.last_seen).total_seconds(), 3) if beat else None,
        })
