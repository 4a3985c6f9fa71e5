"""Page-number pagination whose bad input is the API's 400, not a 404.

DRF answers ``?page=abc`` (or 0, -1, 1.5) with 404 "Invalid page.", which API.md keeps for "no
such object". Here a ``page`` that is not a whole number from 1 is 400 ``invalid`` with
``fields.page``; a page past the last one stays 404 and names the last page. Where a list takes
``page_size``, one that is not a whole number from 1 is 400 ``fields.page_size`` (DRF ignored it
and answered its default size); one above the list's maximum is that maximum."""
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.pagination import PageNumberPagination

from core.errors import NotFoundError


def _whole_from_one(raw: str) -> bool:
    return raw.isascii() and raw.isdigit() and bool(raw.strip("0"))


class StrictPageNumberPagination(PageNumberPagination):
    def paginate_queryset(self, queryset, request, view=None):
        raw = request.query_params.get(self.page_query_param) or ""  # empty: the first page
        if raw and raw not in self.last_page_strings and not _whole_from_one(raw):
            raise serializers.ValidationError({self.page_query_param: ["A page is a whole number from 1."]})
        size = (request.query_params.get(self.page_size_query_param) or "") if self.page_size_query_param else ""
        if size and not _whole_from_one(size):
            raise serializers.ValidationError({self.page_size_query_param: [
                f"A page size is a whole number from 1 (at most {self.max_page_size} are shown)."
                if self.max_page_size else "A page size is a whole number from 1."]})
        try:
            return super().paginate_queryset(queryset, request, view)
        except NotFound:
            last = self.django_paginator_class(queryset, self.get_page_size(request)).num_pages
            page = f"page {raw}" if len(raw) <= 20 else "such page"
            raise NotFoundError(f"No {page}: the last page is {last}.") from None


class ListPagination(StrictPageNumberPagination):
    """Every list of the API: 50 a page, ``page_size`` up to 200."""
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


PAGE_PARAMETERS = [OpenApiParameter("page", int, description="from 1 (400 otherwise; past the last: 404)"),
                   OpenApiParameter("page_size", int, description="1 to 200 (more shows 200); 50 by default")]
