"""Serializer fields that refuse values of the wrong JSON type instead of coercing them
(DRF turns 123 into "123" for a CharField and an integer into a UUID for a UUIDField)."""
from rest_framework import serializers


class _StrictString:
    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(_StrictString, serializers.CharField):
    default_error_messages = {"invalid": "Must be a string."}


class StrictSlugField(_StrictString, serializers.SlugField):
    pass


class StrictUUIDField(_StrictString, serializers.UUIDField):
    default_error_messages = {"invalid": "Must be a valid UUID string."}
