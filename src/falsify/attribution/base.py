"""What every attribution method shares: the metric-learning target, input checks, map
normalisation, layer lookup and hook handling.

The target of face verification is not a class logit but the similarity of the probe's
embedding to a reference embedding (the other face of the pair):

    s(x) = cos(f(x), r) = <f(x), r / |r|>          (f(x) is already L2-normalised)

Without a reference, the target is the norm of the pre-normalisation embedding |g(x)|
(how strongly the network responds to the face), which gives a non-degenerate map; the
L2-normalised embedding alone has a constant norm and no gradient to explain.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.base import FaceEmbedder, model_device

NORMALISATIONS = ("abs", "positive", "signed")


class AttributionError(ValueError):
    """Bad options or inputs for an attribution method; the message says what to change."""


class SimilarityTarget:
    """The scalar each method explains, one value per image: cos(f(x), r), or |g(x)| without r."""

    def __init__(self, model: FaceEmbedder) -> None:
        self.model = model

    def __call__(self, images: torch.Tensor, references: torch.Tensor | None) -> torch.Tensor:
        return self.with_embeddings(images, references)[0]

    def with_embeddings(self, images: torch.Tensor, references: torch.Tensor | None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the target (B,), the images' L2-normalised embeddings (B, D)) from one forward pass."""
        if references is None:
            raw = self.model.embed_raw(images)
            return raw.norm(dim=1), F.normalize(raw, dim=1)
        emb = self.model(images)
        return (emb * F.normalize(references.to(emb.dtype), dim=1)).sum(dim=1), emb

    def forward_func(self) -> Callable[..., torch.Tensor]:
        """A captum-style ``forward_func(inputs, references)`` returning one scalar per input.

        captum expands ``additional_forward_args`` along with the inputs when it batches
        perturbations, so the references stay aligned with their images.
        """

        def f(inputs: torch.Tensor, references: torch.Tensor | None = None) -> torch.Tensor:
            return self(inputs, references)

        return f


def normalise_maps(raw: torch.Tensor, mode: str = "positive") -> torch.Tensor:
    """Map (B,H,W) raw attributions to [0,1] per map.

    ``positive``: min-max of the ReLU'd map (CAM methods: only evidence for the target);
    ``abs``: min-max of |raw| (importance = magnitude of effect on the similarity);
    ``signed``: min-max of raw. An all-equal map becomes all zeros (never NaN).
    """
    if mode not in NORMALISATIONS:
        raise AttributionError(f"normalise must be one of {NORMALISATIONS}, got {mode!r}")
    if mode == "abs":
        raw = raw.abs()
    elif mode == "positive":
        raw = raw.clamp_min(0)
    flat = raw.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1)
    span = hi - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (raw - lo) / safe, torch.zeros_like(raw))


def find_layer(model: nn.Module, layer: str | nn.Module | None) -> tuple[str, nn.Module]:
    """Resolve a layer given by name (``"backbone.layer4.2.conv2"`` or relative to the backbone,
    ``"layer4.2.conv2"``), by module, or by default the model's own ``cam_layer`` when it
    declares one, else the last ``nn.Conv2d`` with a spatial output (``default_cam_layer``)."""
    modules = dict(model.named_modules())
    if isinstance(layer, nn.Module):
        for name, mod in modules.items():
            if mod is layer:
                return name, mod
        raise AttributionError("the layer module given is not part of the model")
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    if layer is None:
        if not convs:
            raise AttributionError(
                f"model {getattr(model, 'name', type(model).__name__)!r} has no nn.Conv2d layer, so "
                "CAM methods have no feature map to use; pass layer=<name> of a layer with a "
                "(B,C,h,w) output, or use a pixel method (ig, saliency, occlusion, kernelshap, lime)"
            )
        preferred = getattr(model, "cam_layer", None)
        if preferred:
            return find_layer(model, preferred)
        name = default_cam_layer(model, convs)
        return name, modules[name]
    for name in (layer, f"backbone.{layer}"):
        if name in modules and name != "":
            return name, modules[name]
    shown = ", ".join(c.removeprefix("backbone.") for c in convs[-12:])
    raise AttributionError(
        f"no layer named {layer!r} in the model; its Conv2d layers are: "
        f"{'... ' if len(convs) > 12 else ''}{shown} (all layers: falsify.models.conv_layer_names "
        "or model.named_modules())"
    )


def default_cam_layer(model: nn.Module, convs: list[str]) -> str:
    """The last ``nn.Conv2d`` whose output is larger than 1x1 at the model's input size.

    A 1x1 feature map makes every CAM constant (dlib's ResNet ends in one: its last
    convolution sees a 1x1 grid), so such layers are passed over; the input size comes from
    ``model.input_size`` and one probe forward pass records each convolution's output size.
    """
    size = getattr(model, "input_size", None)
    if size is None:
        return convs[-1]
    modules = dict(model.named_modules())
    shapes: dict[str, tuple] = {}
    handles = [
        modules[n].register_forward_hook(lambda _m, _i, out, n=n: shapes.__setitem__(n, tuple(out.shape)))
        for n in convs
    ]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, *size, device=model_device(model)))
    finally:
        for h in handles:
            h.remove()
    spatial = [n for n in convs if n in shapes and shapes[n][-1] * shapes[n][-2] > 1]
    return spatial[-1] if spatial else convs[-1]


@contextlib.contextmanager
def capture(module: nn.Module) -> Iterator[dict]:
    """Record a module's output (forward hook) and the gradient w.r.t. it (full backward hook).

    The hooks are removed when the block ends, even on error, so nothing leaks between calls.
    """
    store: dict = {}

    def fwd(_m, _inp, out):
        store["activations"] = out

    def bwd(_m, _gin, gout):
        store["gradients"] = gout[0]

    handles = [module.register_forward_hook(fwd), module.register_full_backward_hook(bwd)]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def check_maps(method: str, maps, images: torch.Tensor) -> torch.Tensor:
    """``maps`` when they are (N, H, W) for ``images`` (N, 3, H, W) and finite; else one line
    naming the method and what is wrong (the run records it as the pair's error row)."""
    want = (images.shape[0], *images.shape[-2:])
    if not isinstance(maps, torch.Tensor):
        raise AttributionError(f"method {method!r} returned {type(maps).__name__}, not maps (N, H, W)")
    if tuple(maps.shape) != want:
        raise AttributionError(f"method {method!r} returned maps of shape {tuple(maps.shape)}; expected "
                               f"(N, H, W) = {want} for images of shape {tuple(images.shape)}")
    bad = int((~torch.isfinite(maps)).sum()) if maps.is_floating_point() else 0
    if bad:
        raise AttributionError(f"method {method!r} returned {bad} non-finite value(s) (NaN or inf) in its "
                               f"{maps.numel()}-value maps")
    return maps


class Explainer:
    """Base class: ``explainer(images, references)`` -> maps (B,H,W) in [0,1].

    Subclasses implement ``attribute`` (signed, unnormalised (B,H,W) at input resolution) and
    set ``default_normalise``. Inputs are checked once here, so every method gives the same
    clear errors.
    """

    name = "base"
    default_normalise = "abs"
    needs_gradients = True

    def __init__(self, model: FaceEmbedder, normalise: str | None = None) -> None:
        if not isinstance(model, nn.Module) or not hasattr(model, "input_size"):
            raise AttributionError(
                "model must be a falsify FaceEmbedder (falsify.models.load_model or wrap_model), "
                f"got {type(model).__name__}"
            )
        self.model = model.eval()
        self.target = SimilarityTarget(model)
        self.normalise = normalise or self.default_normalise
        if self.normalise not in NORMALISATIONS:
            raise AttributionError(f"normalise must be one of {NORMALISATIONS}, got {self.normalise!r}")

    # -- checks -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def check_inputs(
        self, images: torch.Tensor, references: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not isinstance(images, torch.Tensor):
            raise AttributionError(f"images must be a torch.Tensor (B,3,H,W), got {type(images).__name__}")
        if images.dim() == 3:
            raise AttributionError(
                f"images must be a batch (B,3,H,W), got {tuple(images.shape)}; use images.unsqueeze(0)"
            )
        self.model.check_input(images)
        if images.numel() and (float(images.min()) < 0.0 or float(images.max()) > 1.0):
            raise AttributionError(
                f"images must be RGB in [0,1], got values in [{float(images.min()):.3g}, "
                f"{float(images.max()):.3g}]; pass unnormalised images (the model normalises)"
            )
        images = images.detach().to(self.device, torch.float32)
        if references is not None:
            if not isinstance(references, torch.Tensor):
                raise AttributionError("references must be a torch.Tensor (B,D) of embeddings")
            if references.dim() == 1:
                references = references.unsqueeze(0).expand(images.shape[0], -1)
            dim = self.model.embedding_dim
            if references.dim() != 2 or references.shape[0] != images.shape[0] or references.shape[1] != dim:
                raise AttributionError(
                    f"references must be embeddings of shape (B, D) = ({images.shape[0]}, {dim}) "
                    f"for this model, got {tuple(references.shape)}; compute them with model(reference_images)"
                )
            references = references.detach().to(self.device, torch.float32)
        return images, references

    # -- API --------------------------------------------------------------------------------
    def attribute(self, images: torch.Tensor, references: torch.Tensor | None = None) -> torch.Tensor:
        """Signed, unnormalised attributions (B,H,W) at the input resolution."""
        images, references = self.check_inputs(images, references)
        maps = check_maps(self.name, self._attribute(images, references), images).detach()
        # a model run in bf16/fp16 (falsify.models.precision) may leave a map in its dtype: maps are float32
        return maps.float() if maps.dtype in (torch.bfloat16, torch.float16) else maps

    def _attribute(self, images: torch.Tensor, references: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, references: torch.Tensor | None = None) -> torch.Tensor:
        """Maps (B,H,W) in [0,1], float, at the input resolution."""
        return normalise_maps(self.attribute(images, references), self.normalise)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={getattr(self.model, 'name', '?')!r}, normalise={self.normalise!r})"
