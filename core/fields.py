"""Serializer fields that refuse values of the wrong JSON type instead of coercing them
(DRF turns 123 into "123" for a CharField and an integer into a UUID for a UUIDField)."""
import json
import re

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.settings import api_settings

from core.text import visible_text


class _StrictString:
    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(_StrictString, serializers.CharField):
    """A JSON string; one that may not be blank may not be made only of what shows as nothing either
    (zero-width and format characters, blank letters: ``core.text.visible_text``): an override's
    justification of "\u200b" was taken where "   " was refused."""
    default_error_messages = {"invalid": "Must be a string."}

    def run_validation(self, data=serializers.empty):
        if not self.allow_blank and isinstance(data, str) and data and not visible_text(data):
            self.fail("blank")
        return super().run_validation(data)


class StrictSlugField(_StrictString, serializers.SlugField):
    pass


class StrictUUIDField(_StrictString, serializers.UUIDField):
    default_error_messages = {"invalid": "Must be a valid UUID string."}


class StrictIntegerField(serializers.IntegerField):
    """A count in a JSON body: a JSON integer only. DRF's IntegerField also takes "12", 12.0 and
    digits of other scripts ("١٢"), so a client's bug (a float where a count belongs, a number
    sent as text) passed unseen; JSON's true is not 1 either."""
    default_error_messages = {"invalid": "Must be a whole number: a JSON integer such as 12, not text or 12.0."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class QueryIntegerField(serializers.IntegerField):
    """A whole number in a query string: ASCII digits (DRF's IntegerField also takes "1e1" as 10,
    "1_0", " 10 " and other scripts' digits)."""
    default_error_messages = {"invalid": "Must be a whole number written with the digits 0-9."}

    def to_internal_value(self, data):
        if not isinstance(data, str) or not _INTEGER.fullmatch(data):
            self.fail("invalid")
        return super().to_internal_value(data)


_INTEGER = re.compile(r"-?[0-9]+", re.ASCII)


class MoneyField(serializers.DecimalField):
    """Money as API.md has it: a decimal string ("0.0125"), never a float. A JSON float is refused
    (0.1 is not 0.1 in binary); a JSON integer is exact and accepted. 4 places, never negative."""
    default_error_messages = {"float": 'Money is a decimal string such as "0.0125", never a float.'}

    def __init__(self, *, max_digits=14, decimal_places=4, min_value=0, **kwargs):
        super().__init__(max_digits=max_digits, decimal_places=decimal_places, min_value=min_value, **kwargs)

    def to_internal_value(self, data):
        if isinstance(data, (float, bool)):
            self.fail("float" if isinstance(data, float) else "invalid")
        if isinstance(data, str) and not _DECIMAL.fullmatch(data):
            # Decimal() would also take "1_000", " 5 ", full-width or Arabic-Indic digits
            raise serializers.ValidationError('Money is a decimal string such as "0.0125" (ASCII digits, a point, '
                                              'no spaces or separators; an exponent as Python writes a Decimal, '
                                              '"1E+2", is read too).', code="invalid")
        value = super().to_internal_value(data)
        # "-0" is zero: without its sign, or "-0.0000" was echoed in the 201 and its event, "0.0000" after
        return value.copy_abs() if value is not None and value.is_zero() else value


_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


class ChoiceField(serializers.ChoiceField):
    """A choice that, refused, names the values it takes ("one of: approve, reject"), so a client
    need not look them up in the schema. A long list (time zones) keeps DRF's short message."""
    MAX_LISTED = 20

    def to_internal_value(self, data):
        try:
            return super().to_internal_value(data)
        except serializers.ValidationError:
            values = [str(v) for v in self.choices]
            if 0 < len(values) <= self.MAX_LISTED:
                shown = data if isinstance(data, str) else json.dumps(data, default=str)  # true, not True
                shown = shown if len(shown) <= 100 else f"{shown[:100]}…"
                raise serializers.ValidationError(
                    f'"{shown}" is not a valid choice: one of {", ".join(values)}.', code="invalid_choice") from None
            raise


@extend_schema_field({"type": "object", "additionalProperties": True})
class JsonObjectField(serializers.JSONField):
    """A JSON object (its view validates it so: 400 "Must be a JSON object."), typed so in the
    OpenAPI schema, where a bare JSONField reads as any value."""


@extend_schema_field({"type": "array", "items": {"type": "string"}})
class StringListField(serializers.JSONField):
    """A JSON list of strings (validated by its view), typed so in the OpenAPI schema."""


class DecimalFieldSchema(OpenApiSerializerFieldExtension):
    """Decimals (money, limits) in the OpenAPI schema as the API writes and reads them. An answer
    carries a string with exactly its places ("0.0125", "12.0000"); a body may send a string or
    a JSON integer. Neither has a minus sign where the field refuses negatives (drf-spectacular's
    own pattern allowed one everywhere, and an empty string)."""
    target_class = "rest_framework.fields.DecimalField"
    match_subclasses = True

    def map_serializer_field(self, auto_schema, direction):
        field = self.target
        if field.max_whole_digits is None or field.decimal_places is None \
                or not getattr(field, "coerce_to_string", api_settings.COERCE_DECIMAL_TO_STRING):
            return auto_schema._map_serializer_field(field, direction, bypass_extensions=True)
        whole, places = field.max_whole_digits, field.decimal_places
        sign = "" if field.min_value is not None and field.min_value >= 0 else "-?"
        if direction == "response":
            return {"type": "string", "format": "decimal", "pattern": rf"^{sign}[0-9]{{1,{whole}}}\.[0-9]{{{places}}}$"}
        text = {"type": "string", "format": "decimal",
                "pattern": rf"^{sign}(?:[0-9]{{1,{whole}}}(?:\.[0-9]{{0,{places}}})?|\.[0-9]{{1,{places}}})$",
                # what clients should send; the server also reads a sign and an exponent ("1E+2", as
                # Python's str(Decimal) writes it), which the pattern leaves out
                "description": 'A decimal string such as "0.0125" (an exponent, "1E+2", is read too).'}
        largest = 10 ** whole - 1
        return {"oneOf": [text, {"type": "integer", "minimum": -largest if sign else 0, "maximum": largest}]}
