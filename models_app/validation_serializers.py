"""Input profiles as the API takes them: typed for OpenAPI, then checked against the model by validation_runs."""

from __future__ import annotations

from rest_framework import serializers

from models_app.validation.profiles import ITEMSIZE, MAX_RANK
from models_app.validation.profiles import NAME_PATTERN as PROFILE_NAME


class InputSpecSerializer(serializers.Serializer):
    """How one input is fed: a concrete shape, its dtype, and for small inputs a constant or a range of values."""

    shape = serializers.ListField(child=serializers.IntegerField(min_value=1), max_length=MAX_RANK, required=False,
                                  help_text="every dimension concrete, symbolic ones bound, e.g. [1, 3, 640, 640]")
    dtype = serializers.ChoiceField(choices=list(ITEMSIZE), required=False,
                                    help_text="must be the dtype the model takes")
    value = serializers.FloatField(required=False, help_text="a constant, e.g. a sample rate of 16000")
    range = serializers.ListField(child=serializers.FloatField(), min_length=2, max_length=2, required=False,
                                  help_text="[low, high]: uniform values (integers for integer inputs)")


class InputProfileSerializer(serializers.Serializer):
    """A named way of calling the model: its inputs' shapes and values, or sample inputs from a test set."""

    name = serializers.RegexField(PROFILE_NAME, max_length=64, help_text="e.g. 640x640")
    dims = serializers.DictField(child=serializers.IntegerField(min_value=1), required=False,
                                 help_text="symbolic dimension name -> size, for every input using it")
    inputs = serializers.DictField(child=InputSpecSerializer(), required=False, help_text="input name -> how it is fed")
    feedback = serializers.DictField(child=serializers.CharField(), required=False,
                                     help_text="output name -> input name: calls run in sequence, each output fed "
                                               "back into that input (recurrent state)")
    samples = serializers.CharField(required=False, help_text="a test set of the model whose inputs are fed "
                                                              "(one array per input, leading sample axis)")


class InputProfilesField(serializers.ListField):
    """Typed profiles, then checked against the model by validation_runs.input_profiles_check (400 per problem)."""

    child = InputProfileSerializer()

    def to_internal_value(self, data):
        super().to_internal_value(data)  # types, with DRF's messages
        return data  # as sent: the model-aware check also refuses fields the types above do not know



class ToleranceSerializer(serializers.Serializer):
    """Within tolerance: |got - expected| <= max_abs + max_rel * |expected| everywhere, and cosine >= min_cosine."""

    max_abs = serializers.FloatField(min_value=0, required=False, allow_null=True, help_text="default 1e-4")
    max_rel = serializers.FloatField(min_value=0, required=False, allow_null=True, help_text="default 1e-3")
    min_cosine = serializers.FloatField(min_value=-1, max_value=1, required=False, allow_null=True,
                                        help_text="off by default")


class OutputTolerancesField(serializers.DictField):
    """Typed tolerances per output, then checked as sent (validation_runs.output_tolerances_set refuses strings
    DRF would coerce and fields it does not know)."""

    child = ToleranceSerializer()

    def to_internal_value(self, data):
        super().to_internal_value(data)
        return data
