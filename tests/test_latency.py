"""Latency tables: measured per layer and option, saved and reloaded exactly, refused for another model or clip,
read as a cost model with CostModel's interface (in ms), and budgeted by `vared finetune --cost latency`."""

from __future__ import annotations

import json

import pytest
import torch

from finetune_helpers import CLIP, converted_tiny, tiny_dataset
from vared_convert.arch import ArchSpec
from vared_convert.baseline import tiny_c3d
from vared_convert.checkpoint import load_model, save_model
from vared_convert.convert import convert
from vared_convert.errors import VaredError
from vared_convert.flops import CostModel
from vared_convert.latency import TABLE_FILE, LatencyCostModel, LatencyTable, cost_model, measure_latency_table
from vared_convert.nn import adaptive_layers
from vared_convert.train.finetune import finetune

SHAPE = (3, 4, 32, 32)


@pytest.fixture(scope="module")
def measured():
    torch.manual_seed(0)
    model = convert(tiny_c3d(num_classes=8, width=8), SHAPE, arch=ArchSpec("vared:tiny_c3d", 8, {"width": 8})).model
    return model, measure_latency_table(model, threads=1, repeats=3, warmup=1)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


def test_the_table_times_every_layer_and_option_on_the_cpu(measured):
    model, table = measured
    layers = adaptive_layers(model)
    assert [entry.name for entry in table.layers] == [name for name, _ in layers]
    for (_, layer), entry in zip(layers, table.layers):
        assert entry.options == [o.as_list() for o in layer.options]
        assert len(entry.option_ms) == layer.num_options and all(t > 0 for t in entry.option_ms)
        assert entry.gate_ms > 0
    assert table.device == "cpu" and table.threads == 1 and table.device_name
    assert table.torch_version == torch.__version__ and table.layout == "channels-last"
    assert table.clip_shape == list(SHAPE) and table.batch == 1 and table.repeats == 3
    assert table.original_ms > 0 and table.full_ms > 0
    assert table.static_ms == pytest.approx(table.full_ms - sum(e.option_ms[0] for e in table.layers))
    # each layer was timed on its real input: the shape CostModel sees it at
    costs = CostModel(model, SHAPE)
    assert [list(t.input_shape[1:]) for t in costs.layers] == [e.input_shape for e in table.layers]
    model_threads = torch.get_num_threads()
    measure_latency_table(model, threads=1, repeats=1, warmup=0)
    assert torch.get_num_threads() == model_threads


def test_the_table_round_trips_and_is_refused_for_another_model(measured, tmp_path):
    model, table = measured
    path = table.save(tmp_path / "t.json")
    assert LatencyTable.load(path) == table
    with pytest.raises(VaredError, match="exists"):
        table.save(path)
    assert json.loads(path.read_text())["format"] == "vared-latency-table"

    other = convert(tiny_c3d(num_classes=8, width=8), SHAPE, granularity="conv").model  # per-conv layers
    with pytest.raises(VaredError, match="measured on another model") as exc:
        LatencyCostModel.from_table(LatencyTable.load(path), other)
    assert "vared profile MODEL --latency-table OUT" in _one_line(exc)
    narrow = convert(tiny_c3d(num_classes=8, width=8), SHAPE, channel=[1, 0.5]).model  # same layers, other options
    with pytest.raises(VaredError, match="has options"):
        cost_model(narrow, SHAPE, "latency", path)
    with pytest.raises(VaredError, match="measured at clip 3,4,32,32 and this run uses 3,8,32,32") as exc:
        cost_model(model, (3, 8, 32, 32), "latency", path)
    assert "--input-shape 3,8,32,32" in _one_line(exc)


@pytest.mark.parametrize("content,needle", [
    (None, "no such file"),
    (b"\xff\xfe not text", "not UTF-8 text"),
    (b"{not json", "not JSON"),
    (b"[1, 2]", "not a vared latency table"),
    (b'{"format": "vared-latency-table", "format_version": 7}', "format version 7"),
])
def test_a_bad_file_is_one_line(tmp_path, content, needle):
    path = tmp_path / "t.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(VaredError, match=needle) as exc:
        LatencyTable.load(path)
    _one_line(exc)


@pytest.mark.parametrize("edit,needle", [
    (lambda d: d.pop("original_ms"), "original_ms"),
    (lambda d: d.update(full_ms=-1.0), "full_ms: expected a finite, non-negative time"),
    (lambda d: d.update(threads="two"), "threads: expected a positive integer"),
    (lambda d: d.update(clip_shape=[3, 4, 32]), "clip_shape"),
    (lambda d: d["layers"][0].update(option_ms=[1.0]), "layers[0].option_ms"),
    (lambda d: d["layers"][1].update(options=[[1, "a"]]), "layers[1].options"),
    (lambda d: d["layers"].__setitem__(0, 5), "layers[0]: expected an object"),
])
def test_a_malformed_table_names_its_field(measured, tmp_path, edit, needle):
    _, table = measured
    data = table.to_dict()
    edit(data)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    with pytest.raises(VaredError, match="malformed latency table") as exc:
        LatencyTable.load(path)
    assert needle in _one_line(exc)


def test_the_latency_cost_model_has_cost_models_interface_in_ms(measured):
    model, table = measured
    costs = LatencyCostModel.from_table(table, model, SHAPE)
    flops = CostModel(model, SHAPE)
    assert [t.name for t in costs.layers] == [t.name for t in flops.layers]
    assert [len(t.option_macs) for t in costs.layers] == [len(t.option_macs) for t in flops.layers]
    assert costs.unit == "ms" and costs.original_macs == table.original_ms and costs.static_macs == table.static_ms
    full = [0] * len(costs.layers)
    # the table's own consistency: the full policy costs what the whole full-option model measured
    assert costs.forced_macs(full) == pytest.approx(table.full_ms, rel=1e-12)
    assert costs.gate_macs == pytest.approx(table.gate_ms)
    cheapest = [min(range(len(t.option_macs)), key=t.option_macs.__getitem__) for t in costs.layers]
    assert costs.min_macs(with_gates=False) == pytest.approx(costs.forced_macs(cheapest))
    assert costs.min_macs() == pytest.approx(costs.forced_macs(cheapest) + table.gate_ms)
    # gate mode: per-video costs from decisions, and the differentiable ratio at one-hot weights
    choices = [torch.tensor([0, c]) for c in cheapest]
    per_sample = costs.per_sample_macs(choices)
    assert per_sample.tolist() == pytest.approx([costs.forced_macs(full) + table.gate_ms, costs.min_macs()])
    weights = [torch.nn.functional.one_hot(c, len(t.option_macs)).double() for c, t in zip(choices, costs.layers)]
    assert costs.expected_ratio(weights).tolist() == pytest.approx((per_sample / table.original_ms).tolist())


def test_finetune_budgets_time_and_keeps_the_table_with_the_run(run_vared, tmp_path):
    data = tiny_dataset(tmp_path / "data", train_per_class=2, val_per_class=1)
    # wide and long enough that the cheap options (and not only the gates' fixed costs) show in time
    clip = dict(CLIP, frames=8, stride=1, size=64)
    torch.manual_seed(0)
    model = save_model(convert(tiny_c3d(num_classes=8, width=32), (3, 8, 64, 64),
                               arch=ArchSpec("vared:tiny_c3d", 8, {"width": 32})).model, tmp_path / "wide.pth")
    table_path = tmp_path / "t.json"
    run_vared("profile", model, "--latency-table", table_path, "--device", "cpu", "--threads", "1", "--repeats", "20",
              check=True)
    table = LatencyTable.load(table_path)
    assert table.clip_shape == [3, 8, 64, 64]
    result = finetune(model, dict(clip, data=str(data), epochs=1, max_steps=2, cost="latency",
                                  latency_table=str(table_path), target_flops=1.0, run_dir=str(tmp_path / "run")))
    kept = result.run_dir / TABLE_FILE
    assert LatencyTable.load(kept) == table  # the run keeps the table its policy was budgeted on
    final = load_model(result.out)
    label = final.vared_info.recipe.extra["cost"]
    assert label["kind"] == "latency" and label["device"] == table.describe()
    assert LatencyTable.from_dict(label["table"]) == table
    assert "cost: latency" in (result.run_dir / "config.yaml").read_text()
    # what the run logged as its ratio is the table's time ratio of the decisions, not FLOPs
    val = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
           if json.loads(line)["kind"] == "val"][-1]
    costs = LatencyCostModel.from_table(table, final)
    dearest = [max(range(len(t.option_macs)), key=t.option_macs.__getitem__) for t in costs.layers]
    low = costs.min_macs() / costs.original_macs
    high = (costs.forced_macs(dearest) + costs.gate_macs) / costs.original_macs
    assert low * (1 - 1e-6) <= val["flops_ratio"] <= high * (1 + 1e-6)

    # a model finetuned again on FLOPs loses the label
    again = finetune(result.out, dict(clip, data=str(data), epochs=1, max_steps=1, target_flops=1.0,
                                      run_dir=str(tmp_path / "again")))
    assert "cost" not in load_model(again.out).vared_info.recipe.extra
    assert not (again.run_dir / TABLE_FILE).exists()


def test_config_refuses_a_cost_without_its_table(tmp_path):
    data = tiny_dataset(tmp_path / "data", train_per_class=1, val_per_class=1)
    model = converted_tiny(tmp_path / "m.pth")
    with pytest.raises(VaredError, match="--cost latency needs --latency-table"):
        finetune(model, dict(CLIP, data=str(data), cost="latency"))
    with pytest.raises(VaredError, match="only with --cost latency"):
        finetune(model, dict(CLIP, data=str(data), latency_table="t.json"))
    with pytest.raises(VaredError, match="--cost 'time'"):
        finetune(model, dict(CLIP, data=str(data), cost="time"))
    assert not (tmp_path / "runs").exists()
