"""Image quality metrics: MSE on the 0-255 pixel scale, CLIP score and FID (both through torchmetrics).

CLIP and FID need weights. When they cannot run, they raise `MetricUnavailable` with one line that says what is
missing; `evaluate` records that line beside a null value and carries on.

- CLIP score: torchmetrics `CLIPScore` with a CLIP model given by hub id or local folder. Per image it is
  `100 * max(cos(image, text), 0)`; a set's score is the mean over its images.
- FID: torchmetrics `FrechetInceptionDistance`. Its standard Inception-v3 comes from torch-fidelity (which needs
  torchvision) and downloads its weights at first use; `--fid-weights FILE` names either those weights (a state dict
  file) or a feature extractor program (TorchScript, or `torch.export` `.pt2`) that maps uint8 NCHW images to (N, D)
  features, such as the `inception-2015-12-05.pt` TorchScript Inception of StyleGAN2-ADA / clean-fid (called with
  `return_features=True`), or a transformers CLIPModel folder, whose image embeddings are then the features
  (`anna.evaluate.clip_features`; the shipped `tiny-t2i` domain CLIP makes FID run offline).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from anna.errors import AnnaError

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch16"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's file in the torch hub cache
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

ImageLike = Image.Image | np.ndarray | torch.Tensor


class MetricUnavailable(Exception):
    """A metric cannot run here (missing package, weights or network). The message is one line for the user."""


def require_torchmetrics(metric: str) -> None:
    """The metrics extra is optional: without it a metric is unavailable, with this reason."""
    try:
        import torchmetrics  # noqa: F401
    except ImportError:
        raise MetricUnavailable(f"{metric} needs torchmetrics (pip install 'anna[metrics]')") from None


def _cause(e: BaseException) -> str:
    lines = [s for s in str(e).strip().splitlines() if s.strip()]
    return f"{type(e).__name__}: {lines[0].strip() if lines else ''}".rstrip(": ")


def hub_offline() -> bool:
    """True when the Hugging Face hub is switched off (HF_HUB_OFFLINE, or TRANSFORMERS_OFFLINE)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# Pixels


def to_uint8_chw(image: ImageLike) -> torch.Tensor:
    """A PIL image, an HWC uint8 array or a CHW uint8 tensor as a 3-channel CHW uint8 tensor."""
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise AnnaError(f"expected an HxWx3 uint8 array, got {image.dtype} {image.shape}")
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise AnnaError(f"expected a 3xHxW uint8 tensor, got {image.dtype} {tuple(image.shape)}")
    return image


def _pixels(image: ImageLike) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    if isinstance(image, torch.Tensor):
        return image.detach().cpu().double().numpy()
    return np.asarray(image, dtype=np.float64)


def image_mse(a: ImageLike, b: ImageLike) -> float:
    """Mean squared error of two images on the 0-255 pixel scale, over every pixel and channel."""
    x, y = _pixels(a), _pixels(b)
    if x.shape != y.shape:
        raise AnnaError(f"cannot compare images of shapes {x.shape} and {y.shape}")
    return float(np.mean((x - y) ** 2))


def images_mse(a: Sequence[ImageLike], b: Sequence[ImageLike]) -> list[float]:
    """Per-pair image MSE (0-255 scale) of two equally long image lists."""
    if len(a) != len(b):
        raise AnnaError(f"cannot compare {len(a)} images with {len(b)}")
    return [image_mse(x, y) for x, y in zip(a, b, strict=True)]


def load_image_folder(folder: str | Path) -> list[Image.Image]:
    """Every image in a folder (sorted by name), as RGB. An empty or missing folder is an error."""
    path = Path(folder)
    if not path.is_dir():
        raise AnnaError(f"image folder not found: {path}")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise AnnaError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    images = []
    for f in files:
        with Image.open(f) as im:
            images.append(im.convert("RGB"))
    return images


def load_reference_folder(folder: str | Path, size: tuple[int, int]) -> list[Image.Image]:
    """FID reference images: at least two, all of the generated (width, height), else a clear error."""
    images = load_image_folder(folder)
    if len(images) < 2:
        raise AnnaError(f"FID reference folder {folder} holds {len(images)} image; FID needs at least 2")
    wrong = sorted({im.size for im in images if im.size != size})
    if wrong:
        shown = ", ".join(f"{w}x{h}" for w, h in wrong[:3])
        raise AnnaError(
            f"FID reference folder {folder} has images of size {shown}; the evaluated images are "
            f"{size[0]}x{size[1]} (width x height): use references of the same size"
        )
    return images


# CLIP score


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)


class _ClipFeatures(nn.Module):
    """Adapts a transformers CLIPModel to torchmetrics' CLIPScore: `get_*_features` return plain tensors (in
    transformers 5 they return a model output whose `pooler_output` holds the projected embedding)."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip
        self.config = clip.config

    @staticmethod
    def _tensor(out: Any) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._tensor(self.clip.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._tensor(self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def load_clip(name_or_path: str) -> tuple[nn.Module, Any]:
    """A CLIP model and processor from a hub id or a local folder. Raises `MetricUnavailable` with one line."""
    local = Path(name_or_path).expanduser()
    looks_local = local.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1
    if looks_local and not local.is_dir():
        raise MetricUnavailable(f"CLIP model folder not found: {name_or_path}")
    source = str(local) if local.is_dir() else name_or_path
    try:
        from transformers import CLIPModel, CLIPProcessor
    except ImportError as e:  # pragma: no cover - transformers is a core dependency
        raise MetricUnavailable(f"CLIP score needs transformers: {_cause(e)}") from None
    require_torchmetrics("CLIP score")
    try:
        with _quiet_transformers():
            model = CLIPModel.from_pretrained(source).eval()
            processor = CLIPProcessor.from_pretrained(source)
    except Exception as e:  # hub, network and format errors all end here
        if not local.is_dir() and hub_offline():
            raise MetricUnavailable(
                f"CLIP model '{name_or_path}' is not in the local Hugging Face cache and the hub is offline "
                "(HF_HUB_OFFLINE=1); pass --clip-model with a local folder"
            ) from None
        raise MetricUnavailable(f"cannot load CLIP model '{name_or_path}': {_cause(e)}") from None
    return _ClipFeatures(model), processor


class ClipScorer:
    """CLIP score of images against their prompts with torchmetrics' `CLIPScore`, one image at a time."""

    def __init__(self, model_name_or_path: str = DEFAULT_CLIP_MODEL, device: torch.device | str | None = None):
        require_torchmetrics("CLIP score")
        from torchmetrics.multimodal.clip_score import CLIPScore

        self.name = model_name_or_path
        self.device = torch.device(device) if device is not None else default_device()
        model, processor = load_clip(model_name_or_path)
        self.metric = CLIPScore(model_name_or_path=lambda: (model, processor)).to(self.device)

    def scores(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> list[float]:
        """`100 * max(cos, 0)` per (image, prompt) pair."""
        if len(images) != len(prompts):
            raise AnnaError(f"CLIP score: {len(images)} images for {len(prompts)} prompts")
        out = []
        with torch.inference_mode():
            for image, prompt in zip(images, prompts, strict=True):
                self.metric.reset()
                self.metric.update(to_uint8_chw(image).unsqueeze(0).to(self.device), [prompt])
                out.append(float(self.metric.compute()))
        self.metric.reset()
        return out

    def score(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> float:
        """Mean per-image CLIP score."""
        values = self.scores(images, prompts)
        return float(np.mean(values)) if values else float("nan")


# FID


class _TorchScriptFeatures(nn.Module):
    """A feature extractor program (TorchScript or torch.export): uint8 NCHW images in, (N, D) features out.
    Calls it with `return_features=True` when it takes that argument (the StyleGAN2-ADA / clean-fid Inception)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        with contextlib.suppress(Exception):  # exported programs refuse eval(); they have no train mode anyway
            self.module.eval()
        probe = torch.zeros(1, 3, 299, 299, dtype=torch.uint8)
        self.kwargs: dict[str, Any] = {"return_features": True}
        try:
            with torch.inference_mode():
                out = self.module(probe, **self.kwargs)
        except Exception:
            self.kwargs = {}
            with torch.inference_mode():
                out = self.module(probe)
        self.num_features = int(out.reshape(1, -1).shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x, **self.kwargs).reshape(x.shape[0], -1).float()


def _inception_cached() -> bool:
    return (Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE).is_file()


def _load_program(path: Path) -> nn.Module | None:
    """A TorchScript file or a `torch.export` program (.pt2) as a module; None for anything else (a state dict)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in newer torch, still works
        if path.suffix == ".pt2":
            try:
                return torch.export.load(str(path)).module()
            except Exception as e:
                raise MetricUnavailable(f"cannot load the FID feature program {path}: {_cause(e)}") from None
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception:
            return None


def fid_feature_extractor(weights: str | None = None) -> tuple[nn.Module, str]:
    """The FID feature extractor and a description of it. See the module docstring for what `weights` may name.
    Raises `MetricUnavailable` with one line when it cannot be had."""
    require_torchmetrics("FID")
    if weights is not None:
        path = Path(weights).expanduser()
        from anna.evaluate.clip_features import ClipImageFeatures, is_clip_folder

        if is_clip_folder(path):  # a CLIPModel folder: its image tower (e.g. the shipped tiny-t2i domain CLIP)
            try:
                return ClipImageFeatures.from_folder(path), f"CLIP image embeddings ({path})"
            except Exception as e:
                raise MetricUnavailable(f"cannot load the CLIP image tower in {path}: {_cause(e)}") from None
        if not path.is_file():
            raise MetricUnavailable(f"FID weights file not found: {weights}")
        scripted = _load_program(path)
        if scripted is not None:
            try:
                return _TorchScriptFeatures(scripted), f"feature extractor program {path}"
            except Exception as e:
                raise MetricUnavailable(
                    f"FID feature extractor {path} does not take uint8 NCHW images: {_cause(e)}"
                ) from None
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if not bool(_TORCH_FIDELITY_AVAILABLE):
        raise MetricUnavailable(
            "FID needs torchmetrics' Inception-v3 from torch-fidelity (pip install torch-fidelity; it needs "
            "torchvision), or --fid-weights FILE with a TorchScript feature extractor"
        )
    if weights is None and hub_offline() and not _inception_cached():
        raise MetricUnavailable(
            f"FID Inception weights ({INCEPTION_WEIGHTS_FILE}) are not in {torch.hub.get_dir()}/checkpoints and "
            "the network is off (HF_HUB_OFFLINE=1); pass --fid-weights FILE"
        )
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3

        net = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=weights
        )
    except Exception as e:
        raise MetricUnavailable(f"cannot load the FID Inception-v3 weights: {_cause(e)}") from None
    net.num_features = 2048
    return net, f"Inception-v3 pool features (torch-fidelity{', ' + str(weights) if weights else ''})"


class FidScorer:
    """FID of image sets against one reference set, whose features are computed once."""

    def __init__(self, feature: nn.Module, device: torch.device | str | None = None, batch_size: int = 16):
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.device = torch.device(device) if device is not None else default_device()
        self.batch_size = batch_size
        self.metric = FrechetInceptionDistance(feature=feature, reset_real_features=False).to(self.device)
        self.reference_size = 0

    def _update(self, images: Sequence[ImageLike] | torch.Tensor, real: bool) -> int:
        if isinstance(images, torch.Tensor):  # already a batch, e.g. precomputed features for a custom extractor
            self.metric.update(images.to(self.device), real=real)
            return int(images.shape[0])
        tensors = [to_uint8_chw(im) for im in images]
        by_size: dict[tuple[int, ...], list[torch.Tensor]] = {}
        for t in tensors:
            by_size.setdefault(tuple(t.shape), []).append(t)
        with torch.inference_mode():
            for group in by_size.values():
                for i in range(0, len(group), self.batch_size):
                    self.metric.update(torch.stack(group[i : i + self.batch_size]).to(self.device), real=real)
        return len(tensors)

    def set_reference(self, images: Sequence[ImageLike] | torch.Tensor) -> None:
        """The reference ("real") set; needs at least two images."""
        self.metric.reset_real_features = True
        self.metric.reset()
        self.metric.reset_real_features = False
        self.reference_size = self._update(images, real=True)

    def score(self, images: Sequence[ImageLike] | torch.Tensor) -> float:
        """FID of `images` against the reference set."""
        n = len(images)
        if self.reference_size < 2 or n < 2:
            raise MetricUnavailable(
                f"FID needs at least 2 images in each set (reference {self.reference_size}, evaluated {n})"
            )
        self.metric.reset()
        self._update(images, real=False)
        with torch.inference_mode():
            value = float(self.metric.compute())
        self.metric.reset()
        return value
