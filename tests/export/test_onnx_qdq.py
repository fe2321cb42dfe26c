"""ONNX QDQ export of tiny-sdxl, end to end: a calibration run and a plan in, four ONNX graphs and a manifest out,
then ONNX Runtime generation.

One module-scoped export (64x64, 2 steps, guidance 5 so the UNet batch is 2) serves every test. A third of the UNet's
units are kept in FP16 by the plan. Held-out inputs are captured on other prompts (COCO rows 11-12, seed 100).

Numbers measured on this export (CPU, ORT 1.31, calibration on COCO rows 1-8):
- FP32 ONNX vs PyTorch, max abs error: text encoders <= 1e-6, UNet 1e-6, VAE decoder 3e-6 (outputs of magnitude
  1-3). Tolerance: 2e-5 absolute.
- QDQ vs FP32, minimum SQNR over the held-out inputs: text_encoder 38.4 dB, text_encoder_2 32.0 dB (its pooled
  projection is the weakest output), UNet 30.4 dB (a third of its units FP16), VAE decoder 34.9 dB. uint16
  activations add almost no noise (16 bits over a MinMax range); the error is that of uint8 per-channel weights
  (~40 dB per layer for a bell-shaped weight row) accumulated over the layers, plus activations of held-out prompts
  that fall outside the calibrated ranges. Floors: the measured minimum less 5 dB (rounded down). They catch a
  broken recipe: uint8 activations measure 15.8 (text_encoder_2), 18.3 (UNet, all units) and 21.0 dB (VAE).
  (Per-tensor weights cost under 1.5 dB here: tiny's random weights have near-equal channel ranges.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, numpy_helper  # noqa: E402

from anna.adapters import load_model  # noqa: E402
from anna.adapters.base import GenerationSettings  # noqa: E402
from anna.cli import main  # noqa: E402
from anna.errors import AnnaError  # noqa: E402
from anna.export.onnx_export import OPSET, component_specs, feed_from_call, graph_module, unit_nodes  # noqa: E402
from anna.export.onnx_qdq import MANIFEST, capture_component_inputs, export_onnx_qdq, export_pipeline_onnx  # noqa: E402
from anna.export.onnx_quant import COMPUTE_OPS, dq_inputs  # noqa: E402
from anna.export.onnx_runtime import OnnxSDXLPipeline, load_onnx_into, read_manifest  # noqa: E402
from anna.options.quant import sqnr_db  # noqa: E402
from anna.prompts import load_prompts  # noqa: E402

pytestmark = pytest.mark.slow  # one export shared by the module: minutes, not seconds

COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder")
SETTINGS = GenerationSettings(steps=2, guidance=5.0, height=64, width=64)
FP32_ATOL = 2e-5
SQNR_FLOOR_DB = {"text_encoder": 33.0, "text_encoder_2": 27.0, "unet": 25.0, "vae_decoder": 29.0}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, coco_tsv):
    from anna.calibrate import calibrate
    from anna.inventory import build_inventory
    from anna.options.registry import FP16
    from anna.plan import make_plan

    root = tmp_path_factory.mktemp("onnx-qdq")
    model = load_model("tiny-sdxl")
    calibrate(model, root / "run", component="unet", prompts=load_prompts(f"{coco_tsv}:1-8"), settings=SETTINGS,
              cache_samples=8, progress=False)
    inventory = build_inventory(model, "unet")
    plan = make_plan(inventory, {u: FP16 for u in inventory.names[::3]}, default="qdq-u8u16")
    plan.save(root / "plan.json")
    manifest = export_onnx_qdq(root / "run", root / "plan.json", root / "onnx", keep_fp32=True, capture_samples=8,
                               echo=None)
    return SimpleNamespace(root=root, dir=root / "onnx", manifest=manifest, plan=plan)


@pytest.fixture(scope="module")
def held_out(coco_tsv):
    """Real inputs of every component on prompts the export never saw, as ONNX feeds."""
    model = load_model("tiny-sdxl")
    specs = component_specs(model, SETTINGS)
    prompts = load_prompts(f"{coco_tsv}:11-12")
    feeds = {}
    for c in COMPONENTS:
        calls = capture_component_inputs(model, c, prompts, SETTINGS, seed=100, samples=4)
        feeds[c] = [feed_from_call(model, specs[c], a, k) for a, k in calls]
    return SimpleNamespace(model=model, specs=specs, feeds=feeds)


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_manifest_records_shapes_opset_plan_and_sources(exported):
    m = read_manifest(exported.dir)
    assert json.loads((exported.dir / MANIFEST).read_text())["format_version"] == 1
    assert m["model"] == "tiny-sdxl" and m["opset"] == OPSET == 21 and m["run_component"] == "unet"
    assert m["classifier_free_guidance"] and m["settings"]["height"] == 64
    comps = m["components"]
    assert set(comps) == set(COMPONENTS)
    assert comps["unet"]["inputs"]["sample"]["shape"] == [2, 4, 8, 8]  # CFG batch, 64 / vae_scale_factor
    assert comps["unet"]["inputs"]["timestep"]["shape"] == [2]
    assert comps["vae_decoder"]["inputs"]["latent"]["shape"] == [1, 4, 8, 8]
    assert comps["text_encoder"]["inputs"]["input_ids"] == {"shape": [1, 77], "dtype": "int64"}
    assert comps["unet"]["calibration"] == "calibration cache" and comps["unet"]["calibration_samples"] == 8
    assert comps["vae_decoder"]["calibration"].startswith("pipeline capture")
    assert m["plan"]["units"] == exported.plan.units
    assert m["quantization"]["weight_type"] == "QUInt8" and m["quantization"]["activation_type"] == "QUInt16"
    assert all(c["bytes"] < c["fp32_bytes"] for c in comps.values())


@pytest.mark.parametrize("component", COMPONENTS)
def test_fp32_onnx_matches_pytorch(exported, held_out, component):
    wrapper = graph_module(held_out.model, component)
    session = _session(exported.dir / f"{component}.fp32.onnx")
    worst = 0.0
    for feed in held_out.feeds[component]:
        with torch.no_grad():
            ref = wrapper(*[torch.from_numpy(feed[t.name]) for t in held_out.specs[component].inputs])
        ref = ref if isinstance(ref, tuple) else (ref,)
        for got, want in zip(session.run(None, feed), ref, strict=True):
            assert got.shape == tuple(want.shape)
            worst = max(worst, float(np.abs(got - want.numpy()).max()))
    assert worst <= FP32_ATOL, f"{component}: max abs error {worst:.3g}"


def _inits(proto) -> dict:
    return {i.name: i for i in proto.graph.initializer}


@pytest.mark.parametrize("component", COMPONENTS)
def test_qdq_graph_holds_uint8_weights_and_uint16_activations(exported, component):
    proto = onnx.load(str(exported.dir / f"{component}.onnx"))
    assert {o.domain: o.version for o in proto.opset_import}.get("", 0) >= 21
    inits = _inits(proto)
    producers = {o: n for n in proto.graph.node for o in n.output}
    qs = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert qs and all(n.domain in ("", "ai.onnx") for n in proto.graph.node if "Quantize" in n.op_type)
    assert {inits[n.input[2]].data_type for n in qs} == {TensorProto.UINT16}
    weights = 0
    for node in proto.graph.node:
        if node.op_type not in COMPUTE_OPS:
            continue
        for x in node.input:
            dq = producers.get(x)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
                continue
            w = inits[dq.input[0]]
            if w.data_type == TensorProto.INT32:  # a bias: int32 with scale = input scale * weight scale
                continue
            weights += 1
            assert w.data_type == TensorProto.UINT8 and inits[dq.input[2]].data_type == TensorProto.UINT8
            scale = numpy_helper.to_array(inits[dq.input[1]])
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            assert scale.ndim == 1 and scale.size == w.dims[axis] > 1  # one scale per output channel
    assert weights == exported.manifest["components"][component]["weight_types"]["UINT8"] > 0


def test_plan_fp16_units_have_no_qdq_in_front_of_their_compute(exported):
    fp32 = onnx.load(str(exported.dir / "unet.fp32.onnx"), load_external_data=False)
    qdq = onnx.load(str(exported.dir / "unet.onnx"))
    units = list(exported.plan.units)
    nodes = unit_nodes(fp32, units)
    compute = {n.name for n in qdq.graph.node if n.op_type in COMPUTE_OPS}
    fp16 = [u for u, o in exported.plan.units.items() if o == "fp16"]
    assert len(fp16) == len(units[::3]) and fp16
    fp16_compute = {n for u in fp16 for n in nodes[u] if n in compute}
    quant_compute = {n for u in units if u not in fp16 for n in nodes[u] if n in compute}
    assert all(any(n in compute for n in nodes[u]) for u in fp16), "every FP16 unit has MatMul/Conv/Gemm nodes"
    fed = dq_inputs(qdq, fp16_compute | quant_compute)
    assert all(not fed[n] for n in fp16_compute), "an FP16 unit's compute reads a DequantizeLinear"
    assert all(fed[n] for n in quant_compute), "a quantized unit's compute reads only float"
    entry = exported.manifest["components"]["unet"]
    assert entry["fp16_units"] == fp16 and entry["units_without_nodes"] == []
    assert entry["float_compute"] == len(fp16_compute) and entry["restored_float_inputs"] > 0


@pytest.mark.parametrize("component", COMPONENTS)
def test_qdq_stays_close_to_fp32(exported, held_out, component):
    fp32 = _session(exported.dir / f"{component}.fp32.onnx")
    qdq = _session(exported.dir / f"{component}.onnx")
    worst = float("inf")
    for feed in held_out.feeds[component]:
        for a, b in zip(fp32.run(None, feed), qdq.run(None, feed), strict=True):
            worst = min(worst, sqnr_db(torch.from_numpy(a), torch.from_numpy(b)))
    print(f"{component}: QDQ vs FP32 SQNR min {worst:.2f} dB")
    assert worst >= SQNR_FLOOR_DB[component]


def test_ort_pipeline_fp32_reproduces_torch_and_qdq_stays_close(exported, held_out):
    from anna.generate import generate_images

    prompts = ["a red bus parked on a street", "two cats on a sofa"]
    ref = generate_images(held_out.model, prompts, SETTINGS, seed=3, progress=False)
    for variant, max_px, max_mse in (("fp32", 1, 0.01), ("qdq", 255, 50.0)):
        model = load_model("tiny-sdxl")
        model.pipeline = OnnxSDXLPipeline(model.pipeline, exported.dir, variant)
        images = generate_images(model, prompts, SETTINGS, seed=3, progress=False)
        for a, b in zip(ref, images, strict=True):
            diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
            assert np.abs(diff).max() <= max_px and (diff**2).mean() <= max_mse, variant


def test_ort_pipeline_rejects_shapes_it_was_not_exported_for(exported, held_out):
    pipe = OnnxSDXLPipeline(held_out.model.pipeline, exported.dir, "qdq")
    with pytest.raises(AnnaError, match="fixed shapes for 64x64"):
        pipe("a cat", num_inference_steps=1, guidance_scale=5.0, height=128, width=128)
    with pytest.raises(AnnaError, match="guidance > 1"):
        pipe("a cat", num_inference_steps=1, guidance_scale=1.0, height=64, width=64)


def _run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.err


def test_cli_generate_with_an_onnx_checkpoint(exported, tmp_path, capsys, coco_tsv):
    main(["generate", "--model", "tiny-sdxl", "--checkpoint", str(exported.dir), "--prompts", f"{coco_tsv}:1-2",
          "--steps", "2", "--out", str(tmp_path / "img")])
    out = capsys.readouterr().out
    assert "loaded ONNX export" in out and "wrote 2 images" in out
    assert (tmp_path / "img" / "0001.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_evaluate_with_an_onnx_checkpoint(exported, tmp_path, capsys, coco_tsv):
    main(["evaluate", "--model", "tiny-sdxl", "--checkpoint", str(exported.dir), "--prompts", f"{coco_tsv}:1-2",
          "--metrics", "mse", "--steps", "2", "--out", str(tmp_path / "eval"), "--quiet"])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    (entry,) = metrics["entries"]
    assert entry["kind"] == "onnx" and 0.0 < entry["mse"] < 50.0
    assert entry["component_mse"] is None and entry["component_mse_reason"]  # no torch component to replay


def _copy_without(src: Path, dst: Path, skip: str) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name != skip and ".fp32." not in f.name:
            shutil.copy(f, dst / f.name)
    return dst


def test_onnx_folder_with_a_missing_component_is_a_one_line_error(exported, tmp_path, capsys, coco_tsv):
    bad = _copy_without(exported.dir, tmp_path / "no-unet", "unet.onnx")
    argv = ["generate", "--model", "tiny-sdxl", "--prompts", f"{coco_tsv}:1-1", "--out", str(tmp_path / "x")]
    code, err = _run(argv + ["--checkpoint", str(bad)], capsys)
    assert code == 2 and err.count("\n") == 1 and "lacks unet.onnx" in err
    manifest = json.loads((bad / MANIFEST).read_text())
    del manifest["components"]["vae_decoder"]
    (bad / MANIFEST).write_text(json.dumps(manifest))
    code, err = _run(argv + ["--checkpoint", str(bad)], capsys)
    assert code == 2 and err.count("\n") == 1 and "lacks component(s) vae_decoder" in err


def test_onnx_folder_of_another_model_is_an_error(exported, tmp_path):
    other = _copy_without(exported.dir, tmp_path / "other", "")
    manifest = json.loads((other / MANIFEST).read_text())
    manifest["model"] = "stabilityai/sdxl-turbo"
    (other / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(AnnaError, match="export of model 'stabilityai/sdxl-turbo', not 'tiny-sdxl'"):
        load_onnx_into(load_model("tiny-sdxl"), other, echo=None)


def test_plan_for_another_model_is_a_one_line_error(exported, tmp_path):
    plan = json.loads((exported.root / "plan.json").read_text())
    plan["model"] = "sdxl"
    (tmp_path / "sdxl-plan.json").write_text(json.dumps(plan))
    with pytest.raises(AnnaError, match="is for model 'sdxl', not 'tiny-sdxl'") as e:
        export_onnx_qdq(exported.root / "run", tmp_path / "sdxl-plan.json", tmp_path / "out", echo=None)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_cli_export_onnx_qdq_with_a_plan_for_another_model_exits_2(exported, tmp_path, capsys):
    plan = json.loads((exported.root / "plan.json").read_text())
    plan["model"] = "stabilityai/sdxl-turbo"
    (tmp_path / "turbo-plan.json").write_text(json.dumps(plan))
    code, err = _run(["export", "--run", str(exported.root / "run"), "--plan", str(tmp_path / "turbo-plan.json"),
                      "--format", "onnx-qdq", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.count("\n") == 1 and "is for model 'stabilityai/sdxl-turbo', not 'tiny-sdxl'" in err


def test_external_data_when_weights_exceed_the_threshold(tmp_path, coco_tsv):
    model = load_model("tiny-sdxl")
    threshold = 32 * 1024  # the VAE decoder holds ~450 KB of FP32 weights, ~56 KB once quantized
    manifest = export_pipeline_onnx(model, tmp_path, SETTINGS, load_prompts(f"{coco_tsv}:1-2"),
                                    components=["vae_decoder"], keep_fp32=True, external_data_threshold=threshold,
                                    capture_samples=2, echo=None)
    assert manifest["components"]["vae_decoder"]["external_data"]
    for name in ("vae_decoder.onnx", "vae_decoder.fp32.onnx"):
        assert (tmp_path / (name + ".data")).is_file()
        graph = onnx.load(str(tmp_path / name), load_external_data=False)
        big = [i for i in graph.graph.initializer if i.data_location == TensorProto.EXTERNAL or len(i.raw_data) > 1024]
        assert big and all(i.data_location == TensorProto.EXTERNAL for i in big)  # every tensor over 1 KB moved out
    spec = component_specs(model, SETTINGS)["vae_decoder"]
    ((args, kwargs),) = capture_component_inputs(model, "vae_decoder", load_prompts(f"{coco_tsv}:11-11"), SETTINGS,
                                                 seed=100, samples=1)
    feed = feed_from_call(model, spec, args, kwargs)
    with torch.no_grad():
        ref = graph_module(model, "vae_decoder")(torch.from_numpy(feed["latent"])).numpy()
    np.testing.assert_allclose(_session(tmp_path / "vae_decoder.fp32.onnx").run(None, feed)[0], ref, atol=FP32_ATOL)
    got = _session(tmp_path / "vae_decoder.onnx").run(None, feed)[0]
    assert sqnr_db(torch.from_numpy(ref), torch.from_numpy(got)) >= SQNR_FLOOR_DB["vae_decoder"]
