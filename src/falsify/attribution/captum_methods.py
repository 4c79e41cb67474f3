"""captum's attributions by name (``captum:DeepLift``, ``captum:GuidedBackprop``, ...), and
SmoothGrad and VarGrad (captum's ``NoiseTunnel`` over the gradient).

Every one explains the same target as falsify's own methods (``base.SimilarityTarget``: the
cosine of f(x) to the reference). How a captum class is used:

- input attributions ``(N, 3, H, W)`` are summed over the colour channels;
- layer attributions (``captum:Layer*``, ``captum:InternalInfluence``) are taken at ``layer``
  (option ``layer``, ``--layer``; default the model's CAM layer, as gradcam's), summed over the
  channels and upsampled bilinearly to the input size;
- classes that take a module (DeepLift, GuidedBackprop, Deconvolution, ...) get the model with
  the target as its output; a required ``baselines`` is a black image (zeros);
- perturbation classes that take a ``feature_mask`` (FeatureAblation, ShapleyValueSampling, Lime,
  KernelShap) get the test's grid of ``grid`` x ``grid`` cells (default 14) as features;
- the rule-based classes (DeepLift, GuidedBackprop, Deconvolution and their layer and Shap
  forms) need every nonlinearity of the network to be an ``nn.ReLU`` (DeepLift: a module type
  captum has a rule for) that runs once per forward pass: :func:`check_rule_modules` refuses a
  model that uses PReLU, a functional relu, or one ReLU module twice, naming where.

Classes that need what falsify cannot choose (Occlusion's window, a neuron, an exhaustive
Shapley enumeration, a permutation across the batch) are refused with the reason.
"""
from __future__ import annotations

import inspect
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import AttributionError, Explainer, find_layer

CAPTUM_PREFIX = "captum:"

#: captum classes refused by name, with the reason
REFUSED = {
    "NoiseTunnel": "it wraps another method: use falsify's smoothgrad or vargrad (NoiseTunnel over the gradient)",
    "Occlusion": "it needs a sliding window that falsify does not choose for you: use falsify's occlusion "
                 "(option occlusion.window)",
    "ShapleyValues": "it enumerates every ordering of the features (196! for a 14x14 grid): use "
                     "captum:ShapleyValueSampling or falsify's kernelshap",
    "FeaturePermutation": "it permutes features across the images of a batch, so a pair's map would depend on "
                          "which pairs share its batch",
    "LayerFeaturePermutation": "it permutes features across the images of a batch, so a pair's map would depend on "
                               "which pairs share its batch",
    "LimeBase": "it needs its interpretable space defined by hand: use captum:Lime or falsify's lime",
    "DataLoaderAttribution": "it attributes over a data loader, not one pair",
}

#: captum classes whose rules rewrite the backward pass of these module types
RULE_BASED = ("DeepLift", "DeepLiftShap", "LayerDeepLift", "LayerDeepLiftShap", "GuidedBackprop", "Deconvolution",
              "GuidedGradCam")

#: functions (by name) that are ReLU-like activations: GuidedBackprop's and Deconvolution's rule
#: is for ReLU, so each must run inside an ``nn.ReLU`` module (max pooling keeps its gradient there)
_ACTIVATIONS = frozenset({
    "relu", "relu_", "relu6", "prelu", "_prelu_kernel", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "celu",
    "gelu", "silu", "mish", "hardtanh", "hardtanh_", "hardswish", "softplus",
})
#: every nonlinearity DeepLift's rules must see as a module (captum's ``SUPPORTED_NON_LINEAR``)
_NONLINEAR = _ACTIVATIONS | frozenset({
    "hardsigmoid", "sigmoid", "tanh", "max_pool1d", "max_pool2d", "max_pool3d", "_max_pool2d",
    "max_pool2d_with_indices", "softmax",
})


def captum_names() -> list[str]:
    """The captum.attr attribution classes falsify can run by name (``captum:NAME``)."""
    import captum.attr as ca

    out = []
    for n in dir(ca):
        c = getattr(ca, n)
        if inspect.isclass(c) and issubclass(c, ca.Attribution) and _refusal(n, c) is None:
            out.append(n)
    return out


def _refusal(name: str, cls) -> str | None:
    import captum.attr as ca

    if name in REFUSED:
        return REFUSED[name]
    if name.startswith(("Neuron", "LLM", "RemoteLLM")) or issubclass(cls, ca.NeuronAttribution):
        return "it explains one neuron or a language model's output; falsify explains the pair's similarity"
    if not hasattr(cls, "attribute") or name in ("Attribution", "GradientAttribution", "PerturbationAttribution",
                                                  "LayerAttribution", "NeuronAttribution"):
        return "it is a base class, not a method"
    required = [k for k, p in inspect.signature(cls.attribute).parameters.items()
                if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
                and k not in ("self", "inputs", "baselines")]
    if required:
        return f"its attribute() needs {', '.join(required)}, which falsify does not choose"
    return None


def captum_class(name: str) -> type[Explainer]:
    """The explainer class of ``captum:NAME``; one line for a name captum lacks or falsify refuses."""
    cname = name[len(CAPTUM_PREFIX):]
    import captum.attr as ca

    cls = getattr(ca, cname, None)
    if not (inspect.isclass(cls) and issubclass(cls, ca.Attribution)):
        raise AttributionError(f"captum.attr has no attribution class {cname!r}; the ones falsify runs: "
                               f"{', '.join(CAPTUM_PREFIX + n for n in captum_names())}")
    why = _refusal(cname, cls)
    if why:
        raise AttributionError(f"{name} is not run by falsify: {why}")
    params = list(inspect.signature(cls.__init__).parameters)
    layered = "layer" in params
    perturb = "feature_mask" in inspect.signature(cls.attribute).parameters
    base = CaptumLayerExplainer if layered else CaptumPerturbationExplainer if perturb else CaptumExplainer
    return type(f"Captum[{cname}]", (base,), {"name": name, "captum_class": cls, "__module__": __name__})


class _TargetModule(nn.Module):
    """The model with the similarity target as its output, for captum classes that take a module
    (their hooks reach the model's own modules through it)."""

    def __init__(self, target) -> None:
        super().__init__()
        self.model = target.model
        self._target = target

    def forward(self, inputs, references=None):
        return self._target(inputs, references)


def check_rule_modules(model: nn.Module, method: str, allowed: tuple[type, ...],
                       watched: frozenset = _NONLINEAR) -> None:
    """Refuse (one line) a model on which ``method``'s rules would not apply: a nonlinearity that
    is not a module of an ``allowed`` type (PReLU, a functional relu, ...), or such a module run
    twice in one forward pass. One probe forward pass at the model's input size records which
    module each nonlinear function runs in."""
    from torch.overrides import TorchFunctionMode

    names = {m: n for n, m in model.named_modules()}
    stack: list[nn.Module] = []
    calls: dict[nn.Module, int] = {}
    bad: list[str] = []

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            fname = getattr(func, "__name__", "")
            if fname in watched:
                inner = stack[-1] if stack else None
                if isinstance(inner, allowed):
                    calls[inner] = calls.get(inner, 0) + 1
                else:
                    where = names.get(inner, "?") if inner is not None else "the forward function"
                    kind = type(inner).__name__ if inner is not None else "code"
                    bad.append(f"{fname} in {where or 'the model'} ({kind})")
            return func(*args, **(kwargs or {}))

    def pre(m, _inp):
        stack.append(m)

    def post(m, _inp, _out):
        stack.pop()

    handles = []
    for m in model.modules():
        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    size = tuple(getattr(model, "input_size", (112, 112)))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.enable_grad(), Watch():
            model(torch.full((1, 3, *size), 0.5, device=device))
    finally:
        for h in handles:
            h.remove()
    reused = [f"{names[m]} ({n} times)" for m, n in calls.items() if n > 1]
    kinds = ", ".join(t.__name__ for t in allowed[:6]) + (", ..." if len(allowed) > 6 else "")
    model_name = getattr(model, "name", type(model).__name__)
    if bad:
        examples = list(dict.fromkeys(bad))
        shown = "; ".join(examples[:3]) + (f"; and {len(examples) - 3} more" if len(examples) > 3 else "")
        raise AttributionError(
            f"{method} needs every nonlinearity of the model to be a module it has a rule for ({kinds}); "
            f"{model_name} has {len(bad)} without one ({shown}), which captum would pass plain gradients "
            "through: refused (use a gradient method such as saliency, or a model built of nn.ReLU modules)")
    if reused:
        raise AttributionError(
            f"{method} needs each ReLU module to run once per forward pass; {model_name} reuses "
            f"{', '.join(reused[:3])}: refused (give each use its own nn.ReLU module)")


class CaptumExplainer(Explainer):
    """``captum:NAME``: captum's class on the similarity target (input attributions summed over
    the colour channels)."""

    name = "captum"
    default_normalise = "abs"
    captum_class: type | None = None

    def __init__(self, model, normalise: str | None = None) -> None:
        super().__init__(model, normalise)
        cname = self.captum_class.__name__
        if cname in RULE_BASED:
            from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

            if cname in ("GuidedBackprop", "Deconvolution", "GuidedGradCam"):
                check_rule_modules(self.model, self.name, (nn.ReLU,), _ACTIVATIONS)
            else:
                check_rule_modules(self.model, self.name, tuple(SUPPORTED_NON_LINEAR))

    def _make(self):
        cls = self.captum_class
        first = list(inspect.signature(cls.__init__).parameters)[1]
        fn = _TargetModule(self.target) if first == "model" else self.target.forward_func()
        return cls(fn, **self._init_args())

    def _init_args(self) -> dict:
        return {}

    def _attribute_args(self, images) -> dict:
        sig = inspect.signature(self.captum_class.attribute).parameters
        kw = {}
        if "baselines" in sig and sig["baselines"].default is inspect.Parameter.empty:
            # the Shap forms take a distribution: a black and a white image; the others a black image
            kw["baselines"] = torch.cat([torch.zeros_like(images[:1]), torch.ones_like(images[:1])]) \
                if "Shap" in self.captum_class.__name__ else torch.zeros_like(images)
        return kw

    def _attribute(self, images, references):
        method = self._make()
        extra = {} if references is None else {"additional_forward_args": (references,)}
        try:
            with warnings.catch_warnings():  # captum's notes on the hooks it sets, once per call
                warnings.simplefilter("ignore", UserWarning)
                out = method.attribute(images.clone().requires_grad_(True), **self._attribute_args(images), **extra)
        except AttributionError:
            raise
        except Exception as exc:  # noqa: BLE001 - captum's message, on one line
            text = " ".join(str(exc).split())
            raise AttributionError(f"{self.name} failed: {type(exc).__name__}: "
                                   f"{text[:300] + ' ...' if len(text) > 300 else text}") from None
        if isinstance(out, tuple):
            out = out[0]
        return self._to_map(out.detach(), images)

    def _to_map(self, out: torch.Tensor, images) -> torch.Tensor:
        h, w = images.shape[-2:]
        if out.dim() == 4:
            out = out.sum(dim=1)
            if tuple(out.shape[-2:]) != (h, w):
                out = F.interpolate(out.unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False).squeeze(1)
            return out
        raise AttributionError(f"{self.name} gave attributions of shape {tuple(out.shape)}, not (N, C, h, w): "
                               "choose a layer with a spatial output (option layer)")


class CaptumLayerExplainer(CaptumExplainer):
    """``captum:Layer*``: attributions at ``layer`` (default the model's CAM layer, as gradcam's),
    summed over its channels and upsampled bilinearly to the input size."""

    def __init__(self, model, layer: str | None = None, normalise: str | None = None) -> None:
        super().__init__(model, normalise)
        self.layer_name, self.layer = find_layer(model, layer)

    def _make(self):
        cls = self.captum_class
        first = list(inspect.signature(cls.__init__).parameters)[1]
        fn = _TargetModule(self.target) if first == "model" else self.target.forward_func()
        return cls(fn, self.layer)


class CaptumPerturbationExplainer(CaptumExplainer):
    """``captum:FeatureAblation``, ``captum:Lime``, ...: features are the cells of a ``grid`` x
    ``grid`` grid (the test's default grid, 14), each shared by the three colour channels."""

    def __init__(self, model, grid: int = 14, normalise: str | None = None) -> None:
        super().__init__(model, normalise)
        h, w = model.input_size
        if not 1 <= grid <= min(h, w):
            raise AttributionError(f"{self.name}.grid must be between 1 and {min(h, w)}, got {grid}")
        self.grid = grid

    def _attribute_args(self, images) -> dict:
        from ..falsification.regions import feature_segments

        h, w = images.shape[-2:]
        mask = feature_segments(h, w, "grid", grid=self.grid).to(images.device)
        return {**super()._attribute_args(images), "feature_mask": mask.expand(images.shape[0], 3, h, w)}


class _NoiseTunnelExplainer(Explainer):
    """captum's ``NoiseTunnel`` over the gradient of the similarity target (``Saliency``,
    signed): ``n_samples`` copies of each image with Gaussian noise of standard deviation
    ``stdevs`` (in [0, 1] pixel units). The noise of each image is drawn from a generator seeded
    with ``seed`` alone, one image at a time, so a map never depends on which images share its
    batch (a resumed run equals a fresh one)."""

    default_normalise = "abs"
    nt_type = ""

    def __init__(self, model, n_samples: int = 32, stdevs: float = 0.15, seed: int = 0,
                 normalise: str | None = None) -> None:
        super().__init__(model, normalise)
        if n_samples < 1:
            raise AttributionError(f"{self.name}.n_samples must be >= 1, got {n_samples}")
        if stdevs < 0:
            raise AttributionError(f"{self.name}.stdevs must be >= 0, got {stdevs}")
        self.n_samples, self.stdevs, self.seed = n_samples, float(stdevs), seed

    def _gradients(self, images, references) -> torch.Tensor:
        from captum.attr import NoiseTunnel, Saliency

        tunnel = NoiseTunnel(Saliency(self.target.forward_func()))
        devices = [images.device] if images.device.type == "cuda" else []
        out = []
        for i in range(images.shape[0]):
            extra = {} if references is None else {"additional_forward_args": (references[i : i + 1],)}
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                out.append(tunnel.attribute(images[i : i + 1].clone().requires_grad_(True), nt_type=self.nt_type,
                                            nt_samples=self.n_samples, stdevs=self.stdevs, abs=False, **extra))
        return torch.cat(out).detach()


class SmoothGradExplainer(_NoiseTunnelExplainer):
    """SmoothGrad (Smilkov et al., 2017): max over colour channels of |mean of the noisy gradients|."""

    name = "smoothgrad"
    nt_type = "smoothgrad"

    def _attribute(self, images, references):
        return self._gradients(images, references).abs().amax(dim=1)


class VarGradExplainer(_NoiseTunnelExplainer):
    """VarGrad (Adebayo et al., 2018): max over colour channels of the variance of the noisy gradients."""

    name = "vargrad"
    nt_type = "vargrad"

    def _attribute(self, images, references):
        return self._gradients(images, references).amax(dim=1)
