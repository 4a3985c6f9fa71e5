"""core.serializers.CopiedFieldsMixin: each instance validates with its own bound fields, built from
prototypes made once per class."""
from concurrent.futures import ThreadPoolExecutor

from rest_framework import serializers

from core.serializers import CopiedFieldsMixin


class Input(CopiedFieldsMixin, serializers.Serializer):
    name = serializers.CharField(max_length=5)
    kind = serializers.ChoiceField(choices=["a", "b"])
    tags = serializers.ListField(child=serializers.CharField(max_length=3), required=False)
    count = serializers.IntegerField(min_value=0, required=False, default=1)


def test_each_instance_has_its_own_fields_bound_to_it():
    first, second = Input(data={}), Input(data={})
    for name in ("name", "kind", "tags", "count"):
        assert first.fields[name] is not second.fields[name]
        assert first.fields[name].parent is first and second.fields[name].parent is second
    assert first.fields["tags"].child is not second.fields["tags"].child  # a child is deep-copied
    assert first.fields["tags"].child.parent is first.fields["tags"]


def test_validation_is_the_same_as_without_the_mixin_and_independent_per_instance():
    class Plain(serializers.Serializer):
        name = serializers.CharField(max_length=5)
        kind = serializers.ChoiceField(choices=["a", "b"])
        tags = serializers.ListField(child=serializers.CharField(max_length=3), required=False)
        count = serializers.IntegerField(min_value=0, required=False, default=1)

    cases = [{"name": "abc", "kind": "a"}, {"name": "toolong", "kind": "c", "tags": ["abcd"], "count": -1},
             {"name": "ok", "kind": "b", "tags": ["x", "y"], "count": 3}, {}]
    for data in cases * 2:  # the second round uses the prototypes made by the first
        copied, plain = Input(data=data), Plain(data=data)
        assert copied.is_valid() == plain.is_valid()
        assert copied.errors == plain.errors
        if not copied.errors:
            assert copied.validated_data == plain.validated_data


def test_threads_validating_at_once_do_not_see_each_others_data():
    def validate(i):
        s = Input(data={"name": f"n{i % 1000}", "kind": "ab"[i % 2], "tags": [str(i % 100)]})
        assert s.is_valid(), s.errors
        return s.validated_data["name"], s.validated_data["kind"], s.validated_data["tags"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(validate, range(2000)))
    assert results == [(f"n{i % 1000}", "ab"[i % 2], [str(i % 100)]) for i in range(2000)]
