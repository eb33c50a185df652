"""Comparing a model's inputs and outputs with the declared schema."""

from __future__ import annotations

import pytest

from models_app.validation.signature import TensorSpec, compare, declared_specs


def spec(name: str, dtype: str, *shape) -> TensorSpec:
    return TensorSpec(name, dtype, tuple(shape))


@pytest.mark.parametrize(
    ("declared", "actual"),
    [
        (spec("x", "float32", "batch", 4), spec("x", "float32", "N", 4)),  # symbolic names are local
        (spec("x", "float32", 1, 4), spec("x", "float32", "batch", 4)),  # a fixed size fits a dynamic dim
        (spec("x", "float32", "?", 4), spec("x", "float32", 7, 4)),  # declared unknown: anything
        (TensorSpec("x", "float32", None), spec("x", "float32", 2, 2)),  # declared without a shape
        (spec("x", "float32", 1, 4), TensorSpec("x", "float32", None)),  # model without a shape
    ],
)
def test_it_accepts_compatible_tensors(declared, actual):
    assert compare("input", [declared], [actual]) == []


@pytest.mark.parametrize(
    ("declared", "actual", "difference"),
    [
        (spec("x", "float32", "batch", 4), spec("x", "float32", "batch", 8),
         "input 'x': declared float32 [batch, 4], model has float32 [batch, 8]"),
        (spec("x", "float32", "batch", 4), spec("x", "float32", 1, 4),
         "input 'x': declared float32 [batch, 4], model has float32 [1, 4]"),
        (spec("x", "float32", 4), spec("x", "float32", 1, 4),
         "input 'x': declared float32 [4], model has float32 [1, 4]"),
        (spec("x", "float16", 1), spec("x", "float32", 1), "input 'x': declared float16 [1], model has float32 [1]"),
    ],
)
def test_it_spells_out_each_difference(declared, actual, difference):
    assert compare("input", [declared], [actual]) == [difference]


def test_it_names_missing_and_undeclared_tensors():
    differences = compare("input", [spec("a", "int64", 1)], [spec("b", "int64", 1), spec("c", "bool", 1)])

    assert differences == [
        "declared input 'a' is not in the model (model inputs: 'b', 'c')",
        "model input 'b' (int64 [1]) is not declared",
        "model input 'c' (bool [1]) is not declared",
    ]


def test_it_normalises_declared_type_names():
    specs = declared_specs([{"name": "x", "dtype": "tensor(float)", "shape": [None, 3]},
                            {"name": "y", "dtype": "Double"}], "input")

    assert specs == [TensorSpec("x", "float32", ("?", 3)), TensorSpec("y", "float64", None)]


@pytest.mark.parametrize("item", [{"dtype": "float32"}, {"name": "x"}, {"name": "x", "dtype": "float32", "shape": 4},
                                  "x"])
def test_it_refuses_a_malformed_declaration(item):
    with pytest.raises(ValueError):
        declared_specs([item], "input")
