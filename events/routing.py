"""Websocket routes. /ws/events/ arrives with the live-events issue; until then the outbox
is read over HTTP (GET /api/v1/events)."""

websocket_urlpatterns = []
