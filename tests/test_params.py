import pytest

from app.errors import InvalidParameter
from app.params import DEFAULTS, GenerationParams, params_from


def test_defaults_follow_the_contract():
    assert (DEFAULTS.num_return_sequences, DEFAULTS.max_length, DEFAULTS.temperature,
            DEFAULTS.top_k, DEFAULTS.top_p, DEFAULTS.seed) == (3, 128, 0.8, 50, 0.95, None)


@pytest.mark.parametrize("name, low, high", [
    ("num_return_sequences", 1, 10), ("max_length", 8, 512), ("temperature", 0.1, 2.0),
    ("top_k", 0, 1000), ("top_p", 0.05, 1.0), ("seed", 0, 2**32 - 1),
])
def test_bounds_are_inclusive_and_values_outside_name_the_field(name, low, high):
    assert getattr(GenerationParams(**{name: low}), name) == low
    assert getattr(GenerationParams(**{name: high}), name) == high
    step = 1 if isinstance(low, int) else 0.01
    for bad in (low - step, high + step):
        with pytest.raises(InvalidParameter) as caught:
            GenerationParams(**{name: bad})
        assert caught.value.field == name
        assert caught.value.status == 422


@pytest.mark.parametrize("name, value", [
    ("num_return_sequences", True), ("num_return_sequences", 2.5), ("top_k", "5"), ("temperature", "hot"),
])
def test_wrong_types_are_refused(name, value):
    with pytest.raises(InvalidParameter, match=name):
        GenerationParams(**{name: value})


def test_params_are_frozen():
    with pytest.raises(AttributeError):
        DEFAULTS.temperature = 1.0


def test_params_from_takes_only_public_fields_and_treats_none_as_default():
    params = params_from({"temperature": 1.2, "seed": None, "do_sample": False, "text": "x"})
    assert params.temperature == 1.2
    assert params.seed is None
    assert params.do_sample is True
