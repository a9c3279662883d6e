"""Static alternatives: the searched per-layer policy is the most accurate one in its FLOPs band."""

from __future__ import annotations

import itertools

import pytest
import torch

from finetune_helpers import CLIP, converted_tiny
from vared_convert.alternatives import searched_policy
from vared_convert.checkpoint import load_model
from vared_convert.flops import CostModel
from vared_convert.nn import adaptive_layers
from vared_convert.predict import evaluate, predict

SHAPE = (3, CLIP["frames"], CLIP["size"], CLIP["size"])


@pytest.fixture(scope="module")
def model_and_costs(tmp_path_factory):
    model = load_model(converted_tiny(tmp_path_factory.mktemp("alt") / "tiny_vared.pth")).eval()
    with torch.no_grad():  # random features share a large common part: centre the classifier so that it is seen
        model.fc.bias.zero_()
        model.fc.weight -= model.fc.weight.mean(1, keepdim=True)
    return model, CostModel(model, SHAPE)


def _policies(model, costs):
    """Every static per-layer policy with its FLOPs ratio."""
    layers = adaptive_layers(model)
    for options in itertools.product(*(range(layer.num_options) for _, layer in layers)):
        yield {name: o for (name, _), o in zip(layers, options)}, costs.forced_macs(options) / costs.original_macs


def _batches(model, costs, policy, count=24):
    """Random clips labelled with what ``policy`` predicts for them: that policy is exactly right on them."""
    torch.manual_seed(1)
    frames = torch.linspace(0, 1, SHAPE[1]).view(1, 1, -1, 1, 1)
    columns = torch.linspace(0, 1, SHAPE[3]).view(1, 1, 1, 1, -1)
    speed = 3 * torch.randn(count, 1, 1, 1, 1)  # waves that move at a different speed in every clip
    waves = torch.sin(6 * columns + speed * frames)
    level, amplitude = 2 * torch.randn(count, 3, 1, 1, 1), 3 * torch.randn(count, 3, 1, 1, 1)
    clips = level + amplitude * waves + 0.3 * torch.randn(count, *SHAPE)
    labels = predict(model, clips, costs, policy).logits.argmax(1)
    return [{"clip": clips[i : i + 8], "label": labels[i : i + 8], "video": torch.arange(i, i + 8)}
            for i in range(0, count, 8)]


def test_the_searched_policy_is_the_most_accurate_in_its_band(model_and_costs):
    model, costs = model_and_costs
    policies = list(_policies(model, costs))
    right, ratio = min(policies, key=lambda item: abs(item[1] - 0.6))  # the policy the labels come from
    batches = _batches(model, costs, right)
    band = [(p, r) for p, r in policies if abs(r - ratio) <= 0.03]
    scores = [evaluate(model, batches, policy=p).clip_top1 for p, _ in band]
    assert len(band) > 1 and min(scores) < 100  # the band holds wrong policies too: the search must tell them apart
    found = searched_policy(model, batches, ratio)
    assert found is not None
    assert evaluate(model, batches, policy=found).clip_top1 == 100
    assert abs(costs.forced_macs(list(found.values())) / costs.original_macs - ratio) <= 0.03


def test_no_policy_outside_the_band_or_beyond_the_search_limit(model_and_costs):
    model, costs = model_and_costs
    policies = list(_policies(model, costs))
    batches = _batches(model, costs, policies[0][0])
    assert searched_policy(model, batches, 5.0) is None  # nothing costs five times the original
    assert searched_policy(model, batches, policies[0][1], max_policies=len(policies) - 1) is None


def test_every_uniform_option_of_the_nearest_cost_is_an_alternative():
    from vared_convert.alternatives import nearest_uniform

    # fewer frames and fewer channels can cost the same: both are what a user could fix instead
    options = {(1, 1.0): 1.0, (1, 0.5): 0.55, (2, 1.0): 0.549, (2, 0.5): 0.323, (4, 1.0): 0.323, (1, 0.25): 0.323}
    assert sorted(nearest_uniform(options, 0.35)) == [(1, 0.25), (2, 0.5), (4, 1.0)]
    assert sorted(nearest_uniform(options, 0.5)) == [(1, 0.5), (2, 1.0)]
    assert nearest_uniform(options, 0.9) == [(1, 1.0)]
