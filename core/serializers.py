"""Output serializers that build their fields once per class.

A ModelSerializer introspects its model and builds and binds every field for each instance,
that is for every response (about a millisecond for an approval). ``SharedFieldsMixin`` builds
them once per class and shares them: only for output serializers whose fields depend on nothing
but the class (no context, no request, no SerializerMethodField), whose ``to_representation``
keeps no state. ``CopiedFieldsMixin`` does the same for input serializers with copies per instance."""
import copy


class SharedFieldsMixin:
    @property
    def fields(self):
        cls = type(self)
        fields = cls.__dict__.get("_shared_fields")
        if fields is None:
            fields = super().fields
            cls._shared_fields = fields
        return fields


class CopiedFieldsMixin:
    # Input serializers that copy their fields from prototypes made once per class. (A comment, not
    # a docstring: drf-spectacular took an inherited docstring as the description of every request
    # body built with it, and Swagger UI showed this text under 19 of them.)
    #
    # DRF deep-copies every declared field for each instance, which rebuilds each field from its
    # constructor's arguments (about 35 µs a field; a third of a create's input validation). This
    # mixin builds the fields once per class (DRF's own deep copy, validators included) and gives each
    # instance shallow copies, which it then binds to itself as DRF does: the copies share only what
    # no validation changes (choices, error messages, validators). A field with a child (a list or
    # dict field) or a nested serializer is still deep-copied: its child is bound to its parent.

    def get_fields(self):
        cls = type(self)
        prototypes = cls.__dict__.get("_field_prototypes")
        if prototypes is None:
            prototypes = super().get_fields()
            for field in prototypes.values():
                field.validators  # noqa: B018  (built once, shared by the copies)
            cls._field_prototypes = prototypes
        return {name: copy.deepcopy(field) if _has_parts(field) else copy.copy(field)
                for name, field in prototypes.items()}


def _has_parts(field) -> bool:
    return hasattr(field, "child") or hasattr(field, "fields") or hasattr(field, "child_relation")
