"""`.onnx` super-resolution models run through onnxruntime, as a spandrel `ImageModelDescriptor`.

A graph qualifies when it has one float (fp32 or fp16) input `(B, C, H, W)` with C in {1, 3, 4}
and its first output is `(B, C', s*H, s*W)` for an integer scale s (a Tilewise export, chaiNNer's,
most others). The descriptor's module, `OnnxUpscaler`, is an `nn.Module` without parameters whose
forward converts the torch tensor for the session and back, so the engine (tiling, precision,
channels, alpha, target sizes, hosts) runs it unchanged.

What is read from where:
- scale, channels, multiple-of: from the graph's declared shapes when static, else from probe
  runs on small random images (sizes that are multiples of 1, 2, 4, ... 64 until one works; a
  second size confirms the scale);
- tile margin: the engine's crop probe (`receptive`); onnxruntime gives no input gradients, so
  the module says `differentiable = False` and the gradient probe is skipped;
- a fixed spatial size in the graph: the module tiles internally with windows of exactly that
  size and a margin measured by comparing two overlapping windows (`fixed_margin`); the
  descriptor says `ModelTiling.INTERNAL`, so the engine hands it whole images. A model whose
  output depends on more context than a quarter of its window is refused: no margin that fits
  can be shown to be seamless.

Safety: files are sniffed and size-checked first, then parsed with
`onnx.load(..., load_external_data=False)` from the bytes read once (the session is built from
the same bytes, so what was checked is what runs). Graphs with nodes outside the standard
domains (custom operators need native libraries) or with tensors stored in other files
(external data: paths chosen by the file) are refused; onnxruntime gets no custom-op library
and only the CPU (or CUDA) provider.
"""

from __future__ import annotations

import importlib
import io
import logging
import math
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from spandrel import Architecture, ImageModelDescriptor, ModelTiling, SizeRequirements

from ...archs import LoadHints
from ..errors import ModelFileError, TilewiseError, UnsafeModelError, first_line, printable
from ..plan.receptive import PROBE_TOLERANCE, SAFETY
from ..plan.tiling import split_evenly
from .files import check_model_file, sniff_foreign

log = logging.getLogger("tilewise")

#: protobuf cannot hold a single message of 2 GiB; a larger single-file ONNX model cannot exist.
MAX_ONNX_BYTES = 2 * 1024**3 - 1
#: Operator domains onnxruntime implements itself; any other domain needs a native custom-op library.
ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
#: Standard operators whose work the file sets without bound (a Loop of 2^62 iterations hangs
#: the first run); no exported image upscaler uses them.
UNBOUNDED_OPS = frozenset({"Loop", "Scan"})
IMAGE_CHANNELS = (1, 3, 4)
MAX_SCALE = 16
#: Probe sizes are (m * a, m * b) with a, b odd, so each m is tested exactly (and the sides stay
#: >= 16 px); the first m that runs with a consistent integer scale becomes the `multiple_of`.
PROBE_MULTIPLES = (1, 2, 4, 8, 16, 32, 64)
_PROBE_FACTORS = {1: (17, 23), 2: (9, 13), 4: (5, 7), 8: (3, 5)}
#: Length used for a dynamic axis when the other axis is fixed.
DYNAMIC_PROBE_LENGTH = 32
#: Windows per session run in the internal tiling of fixed-size graphs (when the batch is dynamic).
WINDOWS_PER_RUN = 4

_INSTALL = 'Install the ONNX extra: pip install "tilewise[onnx]".'
_DOWNLOAD_AGAIN = "Download it again from its original page (use the file's direct download link)."
_REEXPORT = "Export it again as one image input (B, C, H, W) with dynamic or fixed height and width."

_NUMPY_TO_TORCH = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}
_ORT_TYPES = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16)}


class OnnxArchitecture(Architecture[torch.nn.Module]):
    """The descriptor's `architecture` for ONNX files; never detects a state dict."""

    def __init__(self) -> None:
        super().__init__(id="ONNX", name="ONNX", detect=lambda state_dict: False)

    def load(self, state_dict):  # type: ignore[override]
        raise ValueError("ONNX models are loaded from .onnx files (tilewise.engine.load_model), not from state dicts")


ARCHITECTURE = OnnxArchitecture()


@dataclass
class GraphInterface:
    """What the engine needs to know about a graph's one image input and its image output."""

    input_name: str
    output_name: str
    input_dtype: np.dtype
    output_dtype: np.dtype
    batch: int | None  # static batch size, None when dynamic
    channels: int | None
    height: int | None  # static input height, None when dynamic
    width: int | None
    opset: int
    parameter_count: int
    producer: str = ""


@dataclass
class _Sessions:
    """The model bytes and one onnxruntime session per device kind, shared by module copies."""

    data: bytes
    cpu: Any
    others: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __deepcopy__(self, memo) -> "_Sessions":  # sessions are immutable and thread-safe: share them
        return self

    def __getstate__(self) -> dict:
        return {"data": self.data}

    def __setstate__(self, state: dict) -> None:
        self.data, self.others, self.lock = state["data"], {}, threading.Lock()
        self.cpu = new_session(self.data, ["CPUExecutionProvider"])

    def for_device(self, device: torch.device) -> Any | None:
        """A CUDA session for `device` (created once), or None: then the CPU session is used."""
        if device.type != "cuda":
            return None
        key = str(device)
        with self.lock:
            if key not in self.others:
                self.others[key] = _cuda_session(self.data, device)
            return self.others[key]


def _cuda_session(data: bytes, device: torch.device) -> Any | None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        log.warning(
            "Tilewise: this onnxruntime has no CUDA provider (install onnxruntime-gpu); the ONNX model runs on the CPU."
        )
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        session = new_session(data, [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"])
    except Exception as error:
        log.warning("Tilewise: onnxruntime could not use CUDA (%s); the ONNX model runs on the CPU.", first_line(error))
        return None
    if "CUDAExecutionProvider" not in session.get_providers():
        return None
    return session


def new_session(data: bytes, providers: list) -> Any:
    """An onnxruntime session from model bytes: ONNX format only, no custom-op libraries,
    as many intra-op threads as torch uses."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: onnxruntime warns about unused initializers etc.
    options.add_session_config_entry("session.load_model_format", "ONNX")
    return ort.InferenceSession(data, sess_options=options, providers=providers)


class OnnxUpscaler(torch.nn.Module):
    """An onnxruntime session as a module: `(B, C, H, W)` float -> `(B, C', sH, sW)` in the
    input's dtype and device. No parameters or buffers, so `.to()`, `.half()`, `.eval()` change
    nothing and `precision.model_on` returns the module itself; copies share the session.

    `fixed_size` (height or None, width or None): the graph's static spatial size; inputs are
    then padded up to it and tiled internally with windows of exactly that size and
    `fixed_margin` pixels of context.
    """

    #: onnxruntime computes no gradients: `receptive` uses its crop probe for the tile margin.
    differentiable = False
    #: the session reads contiguous NCHW arrays; an NHWC input would only cost a copy.
    prefers_channels_last = False

    def __init__(
        self, sessions: _Sessions, interface: GraphInterface, scale: int, output_channels: int, fixed_margin: int = 0
    ):
        super().__init__()
        self.sessions = sessions
        self.interface = interface
        self.scale = scale
        self.output_channels = output_channels
        self.fixed_size = (interface.height, interface.width)
        self.fixed_margin = fixed_margin
        self.parameter_count = interface.parameter_count

    @property
    def fixed(self) -> bool:
        return self.fixed_size != (None, None)

    def extra_repr(self) -> str:
        size = "x".join(str(v or "*") for v in self.fixed_size)
        return f"scale={self.scale}, input={self.interface.input_dtype}, size={size}, opset={self.interface.opset}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _compiling():  # torch.compile (TileSettings.compile): onnxruntime runs outside the traced graph
            return _outside_compiler(self._forward)(x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        # documented torch.jit API, absent from torch.jit.__all__
        if torch.jit.is_tracing() or torch.jit.is_scripting():  # pyright: ignore[reportPrivateImportUsage]
            raise TilewiseError("this model is an ONNX file already; use the .onnx file itself instead of exporting it")
        if x.ndim != 4:
            raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        if self.fixed:
            return self._forward_fixed(x)
        return self.run(x)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """One pass of the graph over `x` as it is (chunked to a static batch size)."""
        batch = self.interface.batch
        if batch is None or x.shape[0] == batch:
            return self._run_once(x)
        pieces = []
        for start in range(0, x.shape[0], batch):
            chunk = x[start : start + batch]
            count = chunk.shape[0]
            if count < batch:  # a static batch larger than what is left: repeat the last image
                chunk = torch.cat([chunk, chunk[-1:].expand(batch - count, -1, -1, -1)])
            pieces.append(self._run_once(chunk)[:count])
        return torch.cat(pieces)

    def _run_once(self, x: torch.Tensor) -> torch.Tensor:
        session = self.sessions.for_device(x.device) if x.device.type == "cuda" else None
        if session is not None:
            return self._run_cuda(session, x)
        array = x.detach().to(device="cpu", dtype=_NUMPY_TO_TORCH[self.interface.input_dtype]).contiguous().numpy()
        result = _run_session(self.sessions.cpu, self.interface, array)
        return torch.from_numpy(result).to(device=x.device, dtype=x.dtype)

    def _run_cuda(self, session: Any, x: torch.Tensor) -> torch.Tensor:
        """Runs on the GPU without host copies: input and output bound to torch CUDA memory."""
        interface = self.interface
        index = x.device.index if x.device.index is not None else torch.cuda.current_device()
        caller_dtype = x.dtype
        x = x.detach().to(dtype=_NUMPY_TO_TORCH[interface.input_dtype]).contiguous()
        b, _, h, w = x.shape
        out = torch.empty(
            b,
            self.output_channels,
            h * self.scale,
            w * self.scale,
            dtype=_NUMPY_TO_TORCH[interface.output_dtype],
            device=x.device,
        )
        binding = session.io_binding()
        binding.bind_input(
            interface.input_name, "cuda", index, interface.input_dtype.type, tuple(x.shape), x.data_ptr()
        )
        binding.bind_output(
            interface.output_name, "cuda", index, interface.output_dtype.type, tuple(out.shape), out.data_ptr()
        )
        torch.cuda.current_stream(x.device).synchronize()  # onnxruntime uses its own stream
        try:
            session.run_with_iobinding(binding)
        except Exception as error:
            raise _translated(error) from None
        binding.synchronize_outputs()
        return out.to(dtype=caller_dtype)

    def _forward_fixed(self, x: torch.Tensor) -> torch.Tensor:
        """Pads up to the fixed size, runs windows of exactly that size and keeps their cores."""
        b, _, h, w = x.shape
        fixed_h, fixed_w = self.fixed_size
        x, (height, width) = _pad_up_to(x, fixed_h or 0, fixed_w or 0)
        spans_y = fixed_spans(height, fixed_h, self.fixed_margin)
        spans_x = fixed_spans(width, fixed_w, self.fixed_margin)
        s = self.scale
        out = torch.empty(b, self.output_channels, height * s, width * s, dtype=x.dtype, device=x.device)
        jobs = [(i, cy, wy, cx, wx) for i in range(b) for cy, wy in spans_y for cx, wx in spans_x]
        per_run = WINDOWS_PER_RUN if self.interface.batch is None else self.interface.batch
        for start in range(0, len(jobs), per_run):
            group = jobs[start : start + per_run]
            windows = torch.stack([x[i, :, wy[0] : wy[1], wx[0] : wx[1]] for i, _, wy, _, wx in group])
            result = self.run(windows)
            for (i, cy, wy, cx, wx), r in zip(group, result):
                out[i, :, cy[0] * s : cy[1] * s, cx[0] * s : cx[1] * s] = r[
                    :, (cy[0] - wy[0]) * s : (cy[1] - wy[0]) * s, (cx[0] - wx[0]) * s : (cx[1] - wx[0]) * s
                ]
        return out[..., : h * s, : w * s]


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return bool(compiler.is_compiling())
    dynamo = sys.modules.get("torch._dynamo")  # torch < 2.3
    return bool(dynamo is not None and dynamo.is_compiling())


def _outside_compiler(function: Callable) -> Callable:
    """`function` run eagerly under torch.compile (imports dynamo, which is loaded by then anyway)."""
    return torch.compiler.disable(function)


def fixed_spans(length: int, window: int | None, margin: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(core, window) spans covering [0, length) with windows of exactly `window` (None: one
    window of the whole axis); every core has `margin` pixels of context inside its window on
    each side that is not the image border. Needs `length >= window > 2 * margin`."""
    if window is None or length == window:
        return [((0, length), (0, length))]
    pieces = math.ceil(length / (window - 2 * margin))
    spans = []
    for a, b in split_evenly(length, pieces):
        start = min(max(a - margin, 0), length - window)
        spans.append(((a, b), (start, start + window)))
    return spans


def _pad_up_to(x: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pads right/bottom (reflect, then replicate, as spandrel pads to size requirements)."""
    h, w = x.shape[-2:]
    pad_h, pad_w = max(0, height - h), max(0, width - w)
    if pad_h or pad_w:
        reflect_h, reflect_w = min(pad_h, h - 1), min(pad_w, w - 1)
        if reflect_h or reflect_w:
            x = F.pad(x, (0, reflect_w, 0, reflect_h), mode="reflect")
        if pad_h > reflect_h or pad_w > reflect_w:
            x = F.pad(x, (0, pad_w - reflect_w, 0, pad_h - reflect_h), mode="replicate")
    return x, (h + pad_h, w + pad_w)


def _run_session(session: Any, interface: GraphInterface, array: np.ndarray) -> np.ndarray:
    deadline = getattr(_probe_limit, "deadline", None)
    if deadline is None:
        try:
            return session.run([interface.output_name], {interface.input_name: array})[0]
        except Exception as error:
            raise _translated(error) from None
    import onnxruntime as ort

    options = ort.RunOptions()
    timer = threading.Timer(deadline, lambda: setattr(options, "terminate", True))
    timer.daemon = True
    timer.start()
    try:
        return session.run([interface.output_name], {interface.input_name: array}, options)[0]
    except Exception as error:
        if options.terminate:
            raise _ProbeTimeout(
                f"ran longer than {deadline:g} s on a {array.shape[-1]}x{array.shape[-2]} probe image"
            ) from None
        raise _translated(error) from None
    finally:
        timer.cancel()


def _translated(error: BaseException) -> BaseException:
    """onnxruntime's allocation failures as the out-of-memory errors the runner recovers from."""
    text = str(error)
    if "allocate" in text.lower() or "out of memory" in text.lower():
        return RuntimeError(f"onnxruntime ran out of memory: {first_line(error)}")
    return RuntimeError(f"onnxruntime: {first_line(error)}")


# ------------------------------------------------------------------------------------- loading
def load_onnx(path: str | Path, hints: LoadHints | None = None) -> ImageModelDescriptor:
    """Reads, checks and probes an `.onnx` model; returns its descriptor (CPU session).

    Raises `ModelFileError` (or `UnsafeModelError`) naming the file and the fix for every file
    that cannot be used: missing onnx/onnxruntime, not ONNX, damaged, unsafe, not an image model.
    """
    path = Path(path)
    head = check_model_file(path)
    sniff_foreign(path, head)
    size = path.stat().st_size
    if size > MAX_ONNX_BYTES:
        raise ModelFileError(
            path,
            f"is {size / 1024**3:.1f} GiB; a single-file ONNX model is at most 2 GiB, so this is not one Tilewise can "
            f"read.",
            _DOWNLOAD_AGAIN,
        )
    try:
        onnx = importlib.import_module("onnx")
        importlib.import_module("onnxruntime")
    except ImportError as error:
        raise ModelFileError(
            path,
            f"is an ONNX model, and running ONNX models needs the packages onnx and onnxruntime "
            f"({error.name or 'one'} is not installed).",
            _INSTALL,
        ) from None
    data = path.read_bytes()
    model = _parse(path, data, onnx)
    check_safety(path, model)
    try:
        onnx.checker.check_model(model)
    except Exception as error:
        raise ModelFileError(
            path,
            f"is not a valid ONNX graph ({first_line(error)}).",
            "It may be damaged or need a newer onnx package; " + _DOWNLOAD_AGAIN[0].lower() + _DOWNLOAD_AGAIN[1:],
        ) from None
    interface = read_interface(path, model)
    check_static_sizes(path, model)
    del model
    try:
        session = new_session(data, ["CPUExecutionProvider"])
    except Exception as error:
        raise ModelFileError(
            path,
            f"cannot be run by onnxruntime ({first_line(error)}).",
            "If its opset is newer than your onnxruntime supports, upgrade onnxruntime; else "
            + _DOWNLOAD_AGAIN[0].lower()
            + _DOWNLOAD_AGAIN[1:],
        ) from None
    sessions = _Sessions(data, session)
    _complete_interface(path, interface, session)
    run = _time_limited(path, _numpy_runner(sessions, interface))
    if interface.height is None and interface.width is None:
        scale, out_channels, multiple_of = probe_dynamic(path, run, interface)
        margin = 0
    else:
        scale, out_channels, multiple_of = probe_fixed(path, run, interface)
        margin = fixed_margin(path, run, interface, scale)
    module = OnnxUpscaler(sessions, interface, scale, out_channels, margin).eval()
    tags = [f"opset{interface.opset}", "fp16" if interface.input_dtype == np.float16 else "fp32"]
    if module.fixed:
        tags.append("fixed " + "x".join(str(v or "*") for v in module.fixed_size))  # height x width, as export --size
    if interface.producer:
        tags.append(interface.producer)
    return ImageModelDescriptor(
        module,
        {},
        architecture=ARCHITECTURE,
        purpose="SR" if scale > 1 else "Restoration",
        tags=tags,
        supports_half=interface.input_dtype == np.float16,
        supports_bfloat16=False,
        scale=scale,
        input_channels=interface.channels or 3,
        output_channels=out_channels,
        size_requirements=SizeRequirements(multiple_of=multiple_of),
        tiling=ModelTiling.INTERNAL if module.fixed else ModelTiling.SUPPORTED,
    )


def _parse(path: Path, data: bytes, onnx) -> Any:
    try:
        model = onnx.load(io.BytesIO(data), load_external_data=False)
    except Exception as error:
        raise ModelFileError(
            path, f"is not a readable ONNX model: it is truncated or damaged ({first_line(error)}).", _DOWNLOAD_AGAIN
        ) from None
    if not model.HasField("graph") or len(model.graph.node) == 0 or len(model.graph.output) == 0:
        raise ModelFileError(
            path,
            "is not a readable ONNX model: it has no graph (the file is truncated, damaged or not ONNX).",
            _DOWNLOAD_AGAIN,
        )
    return model


def _messages(model):
    """Every protobuf message inside `model` (graphs, subgraphs of If/Loop/Scan at any depth,
    function bodies and the subgraphs inside them, nodes, attributes, tensors), walked with an
    explicit stack so that no nesting depth can exhaust the interpreter's. Only message fields are
    followed, so tensor bytes are never copied."""
    from google.protobuf.descriptor import FieldDescriptor

    pending = [model]
    while pending:
        message = pending.pop()
        yield message
        for descriptor_field in message.DESCRIPTOR.fields:
            if descriptor_field.type != FieldDescriptor.TYPE_MESSAGE:
                continue
            repeated = (
                descriptor_field.is_repeated
                if hasattr(descriptor_field, "is_repeated")
                else descriptor_field.label == FieldDescriptor.LABEL_REPEATED
            )
            if repeated:
                pending.extend(getattr(message, descriptor_field.name))
            elif message.HasField(descriptor_field.name):
                pending.append(getattr(message, descriptor_field.name))


def _nodes(model) -> list:
    import onnx

    return [m for m in _messages(model) if isinstance(m, onnx.NodeProto)]


def check_safety(path: Path, model) -> None:
    """Refuses custom operator domains and tensors stored outside the file, wherever they sit:
    the main graph, any subgraph, any local function, any attribute."""
    import onnx

    local_functions = {(f.domain, f.name) for f in model.functions}
    messages = list(_messages(model))
    nodes = [m for m in messages if isinstance(m, onnx.NodeProto)]
    custom = sorted(
        {n.domain for n in nodes if n.domain not in ALLOWED_DOMAINS and (n.domain, n.op_type) not in local_functions}
    )
    if custom:
        raise UnsafeModelError(
            path,
            f"uses custom operators (domain {', '.join(repr(d) for d in custom)}), which need native code libraries; "
            f"Tilewise runs only standard ONNX operators.",
            "Export the model again with standard operators only.",
        )
    tensors = [m for m in messages if isinstance(m, onnx.TensorProto)]
    external = [
        t.name or "(unnamed)"
        for t in tensors
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data) > 0
    ]
    if external:
        raise UnsafeModelError(
            path,
            f"keeps {len(external)} tensor(s) in separate files (ONNX external data, e.g. "
            f"'{printable(external[0])}'); Tilewise refuses them because the file chooses which paths are read.",
            "Re-save it as one file in a trusted Python session: onnx.save(onnx.load('model.onnx'), 'single.onnx', "
            "save_as_external_data=False).",
        )
    unbounded = sorted({n.op_type for n in nodes if n.domain in ("", "ai.onnx") and n.op_type in UNBOUNDED_OPS})
    if unbounded:
        raise UnsafeModelError(
            path,
            f"uses {', '.join(unbounded)}, whose iteration count the file chooses (it could run without end); image "
            f"upscalers do not need it.",
            "Export the model again without loops (torch.onnx.export of a traced model has none).",
        )


#: Largest tensor a graph may hold whatever its input size (shapes fixed by the file itself).
MAX_STATIC_TENSOR = 1 << 30
#: Longest one probe run may take while a model is loaded (probes are images of 16 to 64 px).
PROBE_SECONDS = 60.0


def check_static_sizes(path: Path, model) -> None:
    """Refuses graphs that build a huge tensor from shapes the file fixes (a 159-byte
    ConstantOfShape of 1x3x24000x24000 asks for 7 GB on any input), using ONNX shape inference
    with data propagation. Consumes `model`: the data of its large initializers is dropped first
    (their shapes stay), so inference copies no weights; the session is built from the file's
    bytes, not from `model`."""
    import onnx

    for tensor in model.graph.initializer:
        if tensor.ByteSize() > 4096:  # weights; shapes and other small constants keep their data for propagation
            for name in (
                "raw_data",
                "float_data",
                "int32_data",
                "int64_data",
                "double_data",
                "uint64_data",
                "string_data",
            ):
                tensor.ClearField(name)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - inference gives up on some valid graphs; the probes' time limit remains
        return
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        tensor = value.type.tensor_type
        if not tensor.shape.dim or not all(d.HasField("dim_value") for d in tensor.shape.dim):
            continue
        dims = [d.dim_value for d in tensor.shape.dim]
        try:
            element = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize
        except Exception:  # noqa: BLE001 - an element type numpy lacks (e.g. float8): count 4 bytes
            element = 4
        size = math.prod(dims) * element
        if size > MAX_STATIC_TENSOR:
            raise ModelFileError(
                path,
                f"builds a tensor of {size / 1024**3:.1f} GiB ('{printable(value.name)}', shape "
                f"{'x'.join(map(str, dims))}) whatever the image size; it was refused as malformed or hostile.",
                _REEXPORT,
            )


def _is_repeated(field) -> bool:
    from google.protobuf.descriptor import FieldDescriptor

    return field.is_repeated if hasattr(field, "is_repeated") else field.label == FieldDescriptor.LABEL_REPEATED


def _time_limited(path: Path, run: "NumpyRun") -> "NumpyRun":
    """`run` for the load-time probes: a run longer than `PROBE_SECONDS` on a small probe image
    is stopped (onnxruntime's `RunOptions.terminate`) and the model refused."""

    def limited(array: np.ndarray) -> np.ndarray:
        _probe_limit.deadline = PROBE_SECONDS
        try:
            return run(array)
        except _ProbeTimeout as timeout:
            raise ModelFileError(path, f"{timeout}; it was refused as malformed or hostile.", _REEXPORT) from None
        finally:
            _probe_limit.deadline = None

    return limited


_probe_limit = threading.local()


class _ProbeTimeout(Exception):
    """A load-time probe run exceeded `PROBE_SECONDS` (not an out-of-memory or model error)."""


def _dims(value_info) -> list[int | None] | None:
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]


def read_interface(path: Path, model) -> GraphInterface:
    """The image input and output a graph declares; refuses what cannot be an image model."""
    import onnx

    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise ModelFileError(
            path, f"has {len(inputs)} inputs ({names}); Tilewise runs models with one image input.", _REEXPORT
        )
    image_in, image_out = inputs[0], model.graph.output[0]
    kinds = {onnx.TensorProto.FLOAT: np.dtype(np.float32), onnx.TensorProto.FLOAT16: np.dtype(np.float16)}
    for role, value in (("input", image_in), ("output", image_out)):
        if not value.type.HasField("tensor_type"):
            raise ModelFileError(
                path, f"has a graph {role} ('{value.name}') that is not a tensor; it is not an image model.", _REEXPORT
            )
        elem = value.type.tensor_type.elem_type
        if elem not in kinds:
            name = onnx.TensorProto.DataType.Name(elem) if elem in onnx.TensorProto.DataType.values() else str(elem)
            raise ModelFileError(
                path,
                f"has a {name} {role} ('{value.name}'); Tilewise runs models with float32 or float16 images.",
                _REEXPORT,
            )
        dims = _dims(value)
        if dims is not None and len(dims) != 4:
            raise ModelFileError(
                path,
                f"has a rank-{len(dims)} {role} ('{value.name}'); an image model takes and returns (batch, channels, "
                f"height, width).",
                _REEXPORT,
            )
    dims = _dims(image_in) or [None] * 4
    channels = dims[1]
    if channels is not None and channels not in IMAGE_CHANNELS:
        raise ModelFileError(
            path, f"takes {channels}-channel input; Tilewise runs image models with 1, 3 or 4 channels.", _REEXPORT
        )
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    count = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    producer = model.producer_name.strip()[:40] if model.producer_name else ""
    return GraphInterface(
        input_name=image_in.name,
        output_name=image_out.name,
        input_dtype=kinds[image_in.type.tensor_type.elem_type],
        output_dtype=kinds[image_out.type.tensor_type.elem_type],
        batch=dims[0],
        channels=channels,
        height=dims[2],
        width=dims[3],
        opset=opset,
        parameter_count=count,
        producer=producer,
    )


def _complete_interface(path: Path, interface: GraphInterface, session: Any) -> None:
    """Fills what the file does not declare from what onnxruntime infers (shapes), and checks the names."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if interface.input_name not in inputs or interface.output_name not in outputs:
        raise ModelFileError(path, "declares an input or output onnxruntime does not see.", _DOWNLOAD_AGAIN)
    shape = inputs[interface.input_name].shape
    if shape is not None and len(shape) == 4:
        static = [v if isinstance(v, int) and v > 0 else None for v in shape]
        interface.batch = interface.batch or static[0]
        interface.channels = interface.channels or static[1]
        interface.height = interface.height or static[2]
        interface.width = interface.width or static[3]
    elif shape is not None and len(shape) != 4:
        raise ModelFileError(
            path, f"has a rank-{len(shape)} input; an image model takes (batch, channels, height, width).", _REEXPORT
        )
    if interface.channels is not None and interface.channels not in IMAGE_CHANNELS:
        raise ModelFileError(
            path,
            f"takes {interface.channels}-channel input; Tilewise runs image models with 1, 3 or 4 channels.",
            _REEXPORT,
        )
    for value, dtype in (
        (inputs[interface.input_name], interface.input_dtype),
        (outputs[interface.output_name], interface.output_dtype),
    ):
        if _ORT_TYPES.get(value.type) != dtype:
            raise ModelFileError(
                path,
                f"has '{value.name}' of type {value.type} in onnxruntime; Tilewise runs float32 or float16 images.",
                _REEXPORT,
            )


NumpyRun = Callable[[np.ndarray], np.ndarray]


def _numpy_runner(sessions: _Sessions, interface: GraphInterface) -> NumpyRun:
    def run(array: np.ndarray) -> np.ndarray:
        array = array.astype(interface.input_dtype)
        batch = interface.batch
        if batch is None or array.shape[0] == batch:
            return _run_session(sessions.cpu, interface, array)
        pieces = []
        for start in range(0, array.shape[0], batch):
            chunk = array[start : start + batch]
            count = chunk.shape[0]
            if count < batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - count, axis=0)])
            pieces.append(_run_session(sessions.cpu, interface, chunk)[:count])
        return np.concatenate(pieces)

    return run


class _ProbeFailed(Exception):
    pass


def _check_output(path: Path, shape_in: tuple[int, ...], result: Any) -> tuple[int, int]:
    """(scale, output channels) of one probe run; raises `_ProbeFailed` for a size-dependent
    problem and `ModelFileError` for one no size can fix."""
    if not isinstance(result, np.ndarray) or result.ndim != 4:
        rank = getattr(result, "ndim", "?")
        raise ModelFileError(
            path, f"returns a rank-{rank} output; an image model returns (batch, channels, height, width).", _REEXPORT
        )
    b, c, h, w = shape_in
    rb, rc, rh, rw = result.shape
    if rb != b:
        raise ModelFileError(
            path, f"returns a batch of {rb} for {b} input images; it is not an image model Tilewise can run.", _REEXPORT
        )
    if rc not in IMAGE_CHANNELS:
        raise ModelFileError(
            path, f"returns {rc}-channel output; Tilewise runs image models with 1, 3 or 4 output channels.", _REEXPORT
        )
    if rh % h or rw % w or rh // h != rw // w or not 1 <= rh // h <= MAX_SCALE:
        raise _ProbeFailed(f"a {w}x{h} input gave a {rw}x{rh} output, which is no integer scale from 1 to {MAX_SCALE}")
    return rh // h, rc


def _probe_once(
    path: Path, run: NumpyRun, channels: int, batch: int, height: int, width: int, rng: np.random.Generator
) -> tuple[int, int]:
    array = rng.random((batch, channels, height, width), dtype=np.float32)
    try:
        result = run(array)
    except ModelFileError:
        raise
    except MemoryError:
        raise ModelFileError(
            path,
            f"ran out of memory on a {width}x{height} probe image; it was refused as malformed or hostile.",
            _REEXPORT,
        ) from None
    except Exception as error:
        raise _ProbeFailed(f"running it on a {width}x{height} image failed: {first_line(error)}") from None
    return _check_output(path, array.shape, result)


def probe_dynamic(path: Path, run: NumpyRun, interface: GraphInterface) -> tuple[int, int, int]:
    """(scale, output channels, multiple_of) of a graph with dynamic height and width."""
    rng = np.random.default_rng(0)
    candidates = [interface.channels] if interface.channels else list((3, 1, 4))
    reason = ""
    for multiple in PROBE_MULTIPLES:
        a, b = _PROBE_FACTORS.get(multiple, (1, 3))
        for channels in candidates:
            try:
                scale, out_channels = _probe_once(path, run, channels, 1, multiple * a, multiple * b, rng)
                again = _probe_once(path, run, channels, 2, multiple * b, multiple * (a + 2), rng)
            except _ProbeFailed as failure:
                reason = str(failure)
                continue
            if again != (scale, out_channels):
                reason = (
                    f"its scale or channels change with the input size ({scale}x, {out_channels} channels at one size; "
                    f"{again[0]}x, {again[1]} at another)"
                )
                continue
            interface.channels = channels
            return scale, out_channels, multiple
    raise ModelFileError(path, f"is not an image model Tilewise can run: {reason}.", _REEXPORT)


def probe_fixed(path: Path, run: NumpyRun, interface: GraphInterface) -> tuple[int, int, int]:
    """(scale, output channels, 1) of a graph with a fixed height and/or width."""
    rng = np.random.default_rng(0)
    height = interface.height or DYNAMIC_PROBE_LENGTH
    width = interface.width or DYNAMIC_PROBE_LENGTH
    candidates = [interface.channels] if interface.channels else [3, 1, 4]
    reason = ""
    for channels in candidates:
        try:
            scale, out_channels = _probe_once(path, run, channels, 1, height, width, rng)
        except _ProbeFailed as failure:
            reason = str(failure)
            continue
        interface.channels = channels
        return scale, out_channels, 1
    raise ModelFileError(path, f"is not an image model Tilewise can run: {reason}.", _REEXPORT)


def fixed_margin(path: Path, run: NumpyRun, interface: GraphInterface, scale: int) -> int:
    """Context margin for tiling a fixed-size graph with windows of exactly its size.

    For each fixed axis of length S, the graph runs on two windows of one random image that
    overlap by S/2; where both windows give a pixel at least r pixels of context, their outputs
    must agree within the probe tolerance. The smallest such r, times the engine's safety factor,
    is the margin. A model that still disagrees at r = S/4 (the most this can show) is refused.
    """
    tolerance = PROBE_TOLERANCE if interface.input_dtype == np.float32 else 4e-3
    channels = interface.channels or 3
    rng = np.random.default_rng(1)
    margin = 0
    for axis, length in ((2, interface.height), (3, interface.width)):
        if length is None:
            continue
        other = (interface.width if axis == 2 else interface.height) or DYNAMIC_PROBE_LENGTH
        shift = length // 2
        shape = [1, channels, other, other]
        shape[axis] = length + shift
        image = rng.random(shape, dtype=np.float32)
        first = run(np.take(image, np.arange(0, length), axis=axis))
        second = run(np.take(image, np.arange(shift, shift + length), axis=axis))
        first = np.take(first, np.arange(shift * scale, length * scale), axis=axis).astype(np.float32)
        second = np.take(second, np.arange(0, (length - shift) * scale), axis=axis).astype(np.float32)
        difference = np.moveaxis(np.abs(first - second), axis, 0)  # (overlap * scale, ...)
        per_pixel = difference.reshape(length - shift, -1).max(axis=1)
        position = np.arange(shift, length)
        context = np.minimum(length - 1 - position, position - shift)
        needed = None
        for r in range(int(context.max()) + 1):
            if per_pixel[context >= r].max() <= tolerance:
                needed = r
                break
        if needed is None:
            raise ModelFileError(
                path,
                f"has a fixed input size ({interface.height or '*'}x{interface.width or '*'}, height x width) and its "
                f"output depends on more context than a quarter of it, so its tiles cannot be shown to join "
                f"seamlessly.",
                "Export it again with dynamic height and width (e.g. tilewise export-onnx from the original weights).",
            )
        margin = max(margin, math.ceil(needed * SAFETY))
    shortest = min(v for v in (interface.height, interface.width) if v is not None)
    if 2 * margin >= shortest:
        raise ModelFileError(
            path,
            f"has a fixed input size too small for the {margin}-pixel margin its tiles need.",
            "Export it again with dynamic height and width.",
        )
    return margin
