"""Export pipeline components (or any module) to ONNX: `torch.onnx.export(dynamo=True)`, opset 21, fixed shapes.

Why the dynamo exporter (torch 2.13's default): on these diffusers/transformers models it emits opset 21 directly
(16-bit QuantizeLinear/DequantizeLinear need opset 21), with `LayerNormalization`, `GroupNormalization` and `Gelu`
as single ops and constants folded, and it tags every node with the module path it came from
(`pkg.torch.onnx.name_scopes`), which maps anna's units to ONNX nodes exactly. The TorchScript exporter
(`dynamo=False`) also works on tiny-sdxl, but its graphs carry hundreds of Shape/Gather/Constant/Identity nodes and
a GroupNorm decomposed through InstanceNormalization, and it is deprecated.

Each exported graph is exactly one anna component, wrapped only to fix its inputs and outputs:
- `text_encoder`, `text_encoder_2`: `input_ids` (1, 77) int64 -> `penultimate_hidden_states` (what SDXL reads) and
  `pooled_embeds` (projected `text_embeds`, or `pooler_output`);
- `unet`: `sample`, `timestep` (B,) float32, `encoder_hidden_states`, `text_embeds`, `time_ids` -> `noise_pred`;
  B is 2 with classifier-free guidance (guidance > 1), else 1;
- `vae_decoder` (`vae.decoder`, after `post_quant_conv`): `latent` -> `image`.
Weights go to one external data file (`NAME.onnx.data`) when the initializers exceed `external_data_threshold`.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from anna.adapters.base import GenerationSettings, Model
from anna.errors import AnnaError

OPSET = 21
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2
"""Initializer bytes above which a model's weights go to external data (protobuf's 2 GB limit, with headroom)."""
SCOPE = "m"
"""Attribute under which every export wrapper holds its component: node scopes read `m.<unit>`."""
NAME_SCOPES = "pkg.torch.onnx.name_scopes"
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
SDXL_COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input: name, shape (ints; strings for dynamic dims) and numpy dtype name."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class ComponentSpec:
    """How one component is exported: its graph inputs and output names."""

    component: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]

    def example(self) -> tuple[torch.Tensor, ...]:
        """Deterministic example inputs of the fixed shapes (token ids 0..n, small random floats)."""
        gen = torch.Generator().manual_seed(0)
        out = []
        for t in self.inputs:
            shape = tuple(int(d) for d in t.shape)
            if t.dtype == "int64":
                out.append(torch.arange(int(np.prod(shape)), dtype=torch.int64).reshape(shape) % 100)
            elif t.name == "timestep":
                out.append(torch.full(shape, 500.0))
            else:
                out.append(torch.randn(shape, generator=gen))
        return tuple(out)


# Wrappers: the component under `m`, fixed inputs and outputs


class TextEncoderGraph(nn.Module):
    """CLIP text encoder: input ids -> (penultimate hidden states, pooled/projected embedding)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.m = encoder

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.m(input_ids, output_hidden_states=True)
        pooled = getattr(out, "text_embeds", None)
        if pooled is None:
            pooled = out.pooler_output
        return out.hidden_states[-2], pooled


class UnetGraph(nn.Module):
    """SDXL UNet with its `text_time` added conditions as plain inputs."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.m = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                text_embeds: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
        cond = {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.m(sample, timestep, encoder_hidden_states, added_cond_kwargs=cond, return_dict=False)[0]


class VaeDecoderGraph(nn.Module):
    """`vae.decoder`: latent (after post_quant_conv) -> image in [-1, 1]."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.m = decoder

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.m(latent)


class GenericGraph(nn.Module):
    """A generic model's `forward(module, batch)` with the batch's tensors as positional inputs."""

    def __init__(self, module: nn.Module, forward: Callable[[nn.Module, Any], torch.Tensor], names: Sequence[str]):
        super().__init__()
        self.m = module
        self._forward = forward
        self._names = tuple(names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self._forward(self.m, dict(zip(self._names, inputs, strict=True)))


def graph_module(model: Model, component: str) -> nn.Module:
    """The export wrapper of a pipeline component, in eval mode."""
    module = model.component(component)
    if component in TEXT_ENCODERS:
        return TextEncoderGraph(module).eval()
    if component == "unet":
        return UnetGraph(module).eval()
    if component == "vae_decoder":
        return VaeDecoderGraph(module).eval()
    raise AnnaError(f"component '{component}' has no ONNX export; use one of {', '.join(SDXL_COMPONENTS)}")


# Shapes


def classifier_free_guidance(model: Model, settings: GenerationSettings) -> bool:
    """Whether the pipeline batches an unconditional and a conditional sample (guidance > 1, no guidance embedding)."""
    unet = model.pipeline.unet
    return settings.guidance > 1.0 and getattr(unet.config, "time_cond_proj_dim", None) is None


def component_specs(model: Model, settings: GenerationSettings) -> dict[str, ComponentSpec]:
    """The fixed-shape specs of every SDXL component of `model` for the run's settings."""
    pipe = model.pipeline
    if pipe is None:
        raise AnnaError(f"model {model.name} is not a diffusion pipeline; export it with export_generic_onnx")
    vsf = int(getattr(pipe, "vae_scale_factor", 8))
    if settings.height % vsf or settings.width % vsf:
        raise AnnaError(f"height and width must be multiples of {vsf} (the VAE scale factor); got "
                        f"{settings.height}x{settings.width}")
    lh, lw = settings.height // vsf, settings.width // vsf
    batch = 2 if classifier_free_guidance(model, settings) else 1
    specs: dict[str, ComponentSpec] = {}
    seq = int(pipe.tokenizer_2.model_max_length)
    for name in TEXT_ENCODERS:
        if name in model.components:
            tok = pipe.tokenizer if name == "text_encoder" else pipe.tokenizer_2
            specs[name] = ComponentSpec(name, (TensorSpec("input_ids", (1, int(tok.model_max_length)), "int64"),),
                                        ("penultimate_hidden_states", "pooled_embeds"))
    unet = pipe.unet
    n_time_ids = 6
    text_dim = unet.add_embedding.linear_1.in_features - unet.config.addition_time_embed_dim * n_time_ids
    specs["unet"] = ComponentSpec("unet", (
        TensorSpec("sample", (batch, unet.config.in_channels, lh, lw), "float32"),
        TensorSpec("timestep", (batch,), "float32"),
        TensorSpec("encoder_hidden_states", (batch, seq, int(unet.config.cross_attention_dim)), "float32"),
        TensorSpec("text_embeds", (batch, int(text_dim)), "float32"),
        TensorSpec("time_ids", (batch, n_time_ids), "float32"),
    ), ("noise_pred",))
    latent_channels = int(pipe.vae.config.latent_channels)
    specs["vae_decoder"] = ComponentSpec("vae_decoder", (TensorSpec("latent", (1, latent_channels, lh, lw),
                                                                    "float32"),), ("image",))
    return specs


def _array(x: Any, dtype: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.float() if x.is_floating_point() else x
        x = x.numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=dtype))


def feed_from_call(model: Model, spec: ComponentSpec, args: tuple, kwargs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The ONNX inputs of one captured `component.forward(*args, **kwargs)` call, checked against the fixed shapes."""
    module = model.component(spec.component)
    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs).arguments
    except TypeError as e:
        raise AnnaError(f"cached input of {spec.component} does not fit its forward(): {e}") from None
    if spec.component in TEXT_ENCODERS:
        values = {"input_ids": bound.get("input_ids")}
    elif spec.component == "unet":
        cond = bound.get("added_cond_kwargs") or {}
        batch = spec.inputs[0].shape[0]
        t = torch.as_tensor(bound.get("timestep")).reshape(-1).float()
        values = {
            "sample": bound.get("sample"),
            "timestep": t.expand(batch) if t.numel() == 1 else t,
            "encoder_hidden_states": bound.get("encoder_hidden_states"),
            "text_embeds": cond.get("text_embeds"),
            "time_ids": cond.get("time_ids"),
        }
    else:
        values = {"latent": bound.get("sample")}
    feed = {}
    for t in spec.inputs:
        value = values.get(t.name)
        if value is None:
            raise AnnaError(f"cached input of {spec.component} lacks '{t.name}'")
        arr = _array(value, t.dtype)
        if tuple(arr.shape) != tuple(t.shape):
            raise AnnaError(f"cached input '{t.name}' of {spec.component} has shape {tuple(arr.shape)}, but the ONNX "
                            f"export has the fixed shape {tuple(t.shape)} (from the run's settings)")
        feed[t.name] = arr
    return feed


# Export and save


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Silence the exporter's progress prints, deprecation chatter and torchvision notices."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_graph(
    wrapper: nn.Module,
    example: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    *,
    opset: int = OPSET,
    dynamic_shapes: Any = None,
) -> Any:
    """`torch.onnx.export(dynamo=True)` of a wrapper to an in-memory `onnx.ModelProto` (constants folded)."""
    try:
        with quiet_export(), torch.no_grad():
            program = torch.onnx.export(
                wrapper, tuple(example), None, dynamo=True, opset_version=opset, input_names=list(input_names),
                output_names=list(output_names), dynamic_shapes=dynamic_shapes, optimize=True, verbose=False,
            )
    except Exception as e:  # the exporter raises many types; one line names the step that failed
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise AnnaError(f"ONNX export failed: {type(e).__name__}: {first}") from e
    return program.model_proto


def initializer_bytes(proto: Any) -> int:
    """Bytes of every initializer and Constant tensor of a model (what external data would move out)."""
    from onnx import numpy_helper

    total = 0
    for init in proto.graph.initializer:
        total += numpy_helper.to_array(init).nbytes if not init.raw_data else len(init.raw_data)
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    total += len(a.t.raw_data) if a.t.raw_data else numpy_helper.to_array(a.t).nbytes
    return total


def save_model(proto: Any, path: str | Path, external_data_threshold: int = EXTERNAL_DATA_THRESHOLD) -> bool:
    """Save `proto` to `path`; weights go to `path.name + '.data'` beside it when they exceed the threshold.

    Files are written in a temporary folder beside `path`, then moved in (a stale data file is removed). Returns
    whether external data was used. The proto may be modified (its tensors moved out) when external data is used.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data_name = path.name + ".data"
    external = initializer_bytes(proto) > external_data_threshold
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        if external:
            onnx.save_model(proto, tmp / path.name, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            os.replace(tmp / data_name, path.parent / data_name)
        else:
            onnx.save_model(proto, tmp / path.name)
            (path.parent / data_name).unlink(missing_ok=True)
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return external


def model_files(path: str | Path) -> list[Path]:
    """The model file and its external data file, when there is one."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return [path, data] if data.is_file() else [path]


def model_bytes(path: str | Path) -> int:
    """Bytes on disk of a model and its external data."""
    return sum(p.stat().st_size for p in model_files(path))


def export_component(
    model: Model,
    component: str,
    spec: ComponentSpec,
    path: str | Path,
    *,
    opset: int = OPSET,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    prepare: Callable[[Any], Any] | None = None,
) -> Any:
    """Export one component with its fixed shapes to `path` (FP32); `prepare(proto)` may rewrite the graph first.

    The component is exported as it is (its device and dtype); an FP16 component should be exported from an FP32
    copy. Returns the saved proto's graph (without weights when they went to external data).
    """
    wrapper = graph_module(model, component)
    proto = export_graph(wrapper, spec.example(), [t.name for t in spec.inputs], spec.outputs, opset=opset)
    if prepare is not None:
        proto = prepare(proto)
    save_model(proto, path, external_data_threshold)
    return proto


# Nodes of units


def node_scopes(node: Any) -> list[str]:
    """The module paths a node was traced under (dynamo metadata); empty when the node carries none."""
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES:
            try:
                value = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return []
            return [str(v) for v in value] if isinstance(value, (list, tuple)) else []
    return []


def unit_nodes(proto: Any, units: Sequence[str], scope: str = SCOPE) -> dict[str, list[str]]:
    """unit name -> names of the graph nodes traced inside that module (`m.<unit>` among the node's scopes).

    Every node of the model must carry the exporter's scope metadata; otherwise the mapping cannot be trusted.
    """
    wanted = {f"{scope}.{u}": u for u in units}
    out: dict[str, list[str]] = {u: [] for u in units}
    tagged = 0
    for node in proto.graph.node:
        scopes = node_scopes(node)
        tagged += bool(scopes)
        for s in scopes:
            unit = wanted.get(s)
            if unit is not None:
                out[unit].append(node.name)
                break
    if proto.graph.node and not tagged:
        raise AnnaError("the ONNX graph carries no module scopes (pkg.torch.onnx.name_scopes): export it with "
                        "torch.onnx.export(dynamo=True) to map units to nodes")
    return out
