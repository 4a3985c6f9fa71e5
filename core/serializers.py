"""Output serializers that build their fields once per class.

A ModelSerializer introspects its model and builds and binds every field for each instance,
that is for every response (about a millisecond for an approval). ``SharedFieldsMixin`` builds
them once per class and shares them: only for output serializers whose fields depend on nothing
but the class (no context, no request, no SerializerMethodField), whose ``to_representation``
keeps no state."""


class SharedFieldsMixin:
    @property
    def fields(self):
        cls = type(self)
        fields = cls.__dict__.get("_shared_fields")
        if fields is None:
            fields = super().fields
            cls._shared_fields = fields
        return fields
