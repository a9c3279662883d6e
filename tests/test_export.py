"""Export: the dynamic ONNX (If) model follows PyTorch on every branch, static policies serve any batch, .pt2
programs round-trip, and a failed verification writes nothing."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from test_dynamic_conv import _steer_gate
from vared_convert.convert import convert
from vared_convert.errors import VaredError
from vared_convert.export import export_model, most_frequent_policy, static_policy
from vared_convert.nn import adaptive_layers, decide, dynamic_convs, forced_policy

SHAPE = (4, 7, 12, 12)  # an odd frame count: the temporal options rebuild a partial last group


class TwoConvNet(nn.Module):
    """Two 3×3×3 convs and a classifier: small enough to export in seconds, both convs adaptive."""

    def __init__(self, num_classes: int = 3, in_channels: int = 4):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, 16, 3, padding=1)
        self.conv2 = nn.Conv3d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(x.mean(dim=(2, 3, 4)))


def two_conv_net(num_classes: int = 3) -> nn.Module:
    return TwoConvNet(num_classes)


def rgb_two_conv_net(num_classes: int = 3) -> nn.Module:
    """The same for RGB video clips."""
    return TwoConvNet(num_classes, in_channels=3)


def adaptive_two_conv() -> nn.Module:
    """Both convs adaptive with all six options; conv1's gate picks option o when input channel o carries a
    large mean (channels 0..3 steer options 5, 4, 3, 2; none steered: option 0)."""
    model = convert(two_conv_net(), SHAPE, convert_stem=True, min_flops_share=0).model
    conv1 = model.get_submodule("conv1")
    assert conv1.num_options == 6
    _steer_gate(conv1, {0: 5, 1: 4, 2: 3, 3: 2})
    with torch.no_grad():
        model.get_submodule("conv2").gate.fc2.weight.normal_(0, 5.0)
    return model


def steered_clip(option_channel: int | None, seed: int) -> torch.Tensor:
    clip = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(seed)) * 0.1
    if option_channel is not None:
        clip[0, option_channel] += 5.0
    return clip


def ort_session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def assert_onnx_follows_every_branch(model: nn.Module, path, steering: list[int | None]) -> None:
    """The dynamic ONNX file gives PyTorch's outputs on clips steered to conv1's options 0, 2, 3, 4 and 5."""
    session = ort_session(path)
    conv1 = model.get_submodule("conv1")
    seen = set()
    for seed, channel in enumerate(steering):
        clip = steered_clip(channel, seed)
        with torch.no_grad():
            decided = decide(model.eval(), clip)
        expected = decided.output
        seen.add(int(decided.decisions[conv1].choice))
        got = session.run(None, {session.get_inputs()[0].name: clip.numpy()})[0]
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)
    assert seen == {0, 2, 3, 4, 5}


@pytest.fixture(scope="module")
def dynamic_export(tmp_path_factory):
    model = adaptive_two_conv()
    folder = tmp_path_factory.mktemp("dynamic")
    results = export_model(model, onnx=folder / "m.onnx", pt2=folder / "m.pt2")
    return model, folder, results


def test_dynamic_onnx_has_if_nodes_and_follows_pytorch_on_every_branch(dynamic_export):
    model, folder, results = dynamic_export
    assert [r.format for r in results] == ["onnx", "pt2"]
    assert all(r.policy == "dynamic" and r.max_abs_error <= 1e-4 for r in results)
    graph = onnx.load(folder / "m.onnx").graph
    assert sum(node.op_type == "If" for node in graph.node) >= 2  # the top of each layer's tree of conds
    assert not any(node.op_type == "AveragePool" for node in graph.node)  # gates pool with ReduceMean

    assert_onnx_follows_every_branch(model, folder / "m.onnx", [None, 0, 1, 2, 3, None, 0, 3])


def test_pt2_program_round_trips(dynamic_export):
    model, folder, _ = dynamic_export
    with open(folder / "m.pt2", "rb") as fh:
        program = torch.export.load(fh).module()
    for seed, channel in enumerate([0, 2, None]):
        clip = steered_clip(channel, seed)
        with torch.no_grad():
            torch.testing.assert_close(program(clip), model.eval()(clip), rtol=1e-5, atol=1e-6)


def test_static_policy_onnx_serves_batches(tmp_path):
    model = adaptive_two_conv()
    policy = static_policy(model, (2, 0.5))
    assert set(policy.values()) == {4}  # (2, 8) of 16 channels
    results = export_model(model, onnx=tmp_path / "s.onnx", policy=policy)
    assert results[0].batch == "any" and results[0].options == policy
    session = ort_session(tmp_path / "s.onnx")
    clips = torch.randn(5, *SHAPE)
    with torch.no_grad(), forced_policy(model, (2, 0.5)):
        expected = model.eval()(clips)
    got = session.run(None, {session.get_inputs()[0].name: clips.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)
    assert not any(node.op_type == "If" for node in onnx.load(tmp_path / "s.onnx").graph.node)


def test_most_frequent_policy_follows_the_gates():
    model = adaptive_two_conv()
    clips = [torch.cat([steered_clip(1, s), steered_clip(1, s + 9), steered_clip(None, s)]) for s in range(3)]
    policy = most_frequent_policy(model, clips)
    assert policy["conv1"] == 4
    assert all(layer.policy is None for _, layer in dynamic_convs(model))  # decisions restored


def test_failed_verification_writes_nothing(tmp_path, monkeypatch):
    model = adaptive_two_conv()
    monkeypatch.setattr("vared_convert.export._run_onnx", lambda path, clips: [np.ones((len(c), 3)) * 7 for c in clips])
    with pytest.raises(VaredError, match="verification failed: onnx output differs"):
        export_model(model, onnx=tmp_path / "bad.onnx", policy=static_policy(model, (1, 1.0)))
    assert list(tmp_path.iterdir()) == []


def test_bad_requests_are_clear_errors(tmp_path):
    model = adaptive_two_conv()
    with pytest.raises(VaredError, match="nothing to write"):
        export_model(model)
    with pytest.raises(VaredError, match="--option 2,1.5 is not in this model's search space"):
        static_policy(model, (2, 1.5))
    with pytest.raises(VaredError, match="--option 3,0.3 is not in this model's search space"):
        static_policy(model, (3, 0.3))  # it once fell back to the full option and exported that
    with pytest.raises(VaredError, match="no adaptive layer"):
        export_model(two_conv_net(), onnx=tmp_path / "x.onnx", input_shape=SHAPE)
    (tmp_path / "taken.onnx").write_bytes(b"x")
    with pytest.raises(VaredError, match="--force"):
        export_model(model, onnx=tmp_path / "taken.onnx")
