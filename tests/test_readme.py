"""The README's promises a new user acts on hold: its sample model is the one it describes."""

import re

import onnx

from tests.artifacts import onnx_model_bytes
from tests.live import ROOT


def test_it_describes_the_sample_model_by_its_real_inputs_and_outputs():
    readme = (ROOT / "README.md").read_text()
    described = re.search(r"one float input `(\w+)` \[([\d, ]+)\] -> .* one output\s+# `(\w+)` \[([\d, ]+)\]", readme)
    assert described, "the README no longer describes the sample model's input and output"
    graph = onnx.load_from_string(onnx_model_bytes()).graph

    def signature(values) -> list[tuple[str, list[int]]]:
        return [(v.name, [d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values]

    assert signature(graph.input) == [(described[1], [int(n) for n in described[2].split(",")])]
    assert signature(graph.output) == [(described[3], [int(n) for n in described[4].split(",")])]
