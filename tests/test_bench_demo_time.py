"""benchmarks/bench_demo_time.py: its static bound is the original network doing the work of the policy's computed
parts and nothing else (no gate, no rebuild), and it is refused for policies it cannot express."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import torch

from vared_convert.baseline import demo_c3d
from vared_convert.convert import convert
from vared_convert.flops import CostModel, count_macs
from vared_convert.nn import adaptive_layers
from vared_convert.nn.policy import option_index

ROOT = Path(__file__).resolve().parents[1]
CLIP = (3, 8, 56, 56)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_demo_time", ROOT / "benchmarks" / "bench_demo_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _demo_model(granularity: str):
    """A small demo_c3d and its conversion at ``granularity``, with the adaptive layers."""
    torch.manual_seed(0)
    original = demo_c3d(num_classes=8, width=4).eval()
    adaptive = convert(copy.deepcopy(original), CLIP, granularity=granularity).model.eval()
    return original, adaptive, [layer for _, layer in adaptive_layers(adaptive)]


def test_static_bound_skips_frames_from_the_first_cut_on_with_nothing_added():
    bench = _bench()
    original, adaptive, layers = _demo_model("block")
    assert len(layers) == 3  # block1, block2, block3 (the stem stays static)
    half = [option_index(layer, 2, 1.0) for layer in layers]

    policy = [0, half[1], half[2]]  # every frame in block1, every second one from block2 on
    bound = bench.static_bound(original, adaptive, policy)
    assert bound is not None and bound is not original
    assert tuple(bound.block2[0].stride) == (2, 2, 2) and tuple(original.block2[0].stride) == (1, 2, 2)
    assert tuple(bound.block3[0].stride) == (1, 1, 1)  # it runs on the frames block2 computed
    costs = CostModel(adaptive, CLIP)
    bound_macs = count_macs(bound, torch.zeros(1, *CLIP))[0]
    # the policy's work without its rebuilds and gates: the same to within the rebuilds' few multiply-adds
    assert abs(bound_macs - costs.forced_macs(policy)) < 0.01 * costs.original_macs
    assert bound_macs < 0.7 * costs.original_macs

    assert bench.static_bound(original, adaptive, [0, 0, 0]) is None  # nothing cut in time
    assert bench.static_bound(original, adaptive, [half[0], 0, half[2]]) is None  # a full-rate block after a cut
    assert bench.static_bound(original, adaptive, [0, option_index(layers[1], 2, 0.5), half[2]]) is None  # channels


def test_static_bound_of_a_run_strides_its_first_conv():
    """At stage granularity block2 and block3 are one run (one layer): its frame skip is block2's stride."""
    bench = _bench()
    original, adaptive, layers = _demo_model("stage")
    assert [layer.kind for layer in layers] == ["chain", "run"]
    bound = bench.static_bound(original, adaptive, [0, option_index(layers[1], 2, 1.0)])
    assert tuple(bound.block2[0].stride) == (2, 2, 2) and tuple(bound.block3[0].stride) == (1, 1, 1)
    assert tuple(bound.block1[0].stride) == (1, 1, 1)
    assert bench.static_bound(original, adaptive, [0, option_index(layers[1], 2, 0.5)]) is None  # channels
