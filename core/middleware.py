import os


class ChunkedBodyMiddleware:
    """DRF reads a body only when Content-Length is set; a chunked request has none. Django
    has already spooled the whole body (ASGI), so give it its length: BoundedJSONParser then
    parses it and enforces the size limit like any other body."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not request.META.get("CONTENT_LENGTH") and \
                "chunked" in request.headers.get("Transfer-Encoding", "").lower():
            try:
                stream = request._stream
                stream.seek(0, os.SEEK_END)
                size = stream.tell()
                stream.seek(0)
                request.META["CONTENT_LENGTH"] = str(size)
            except (AttributeError, OSError, ValueError):
                pass
        return self.get_response(request)
