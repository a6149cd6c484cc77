"""A pre-scan of checkpoint pickles: nothing reaches `torch.load` that could crash, hang or
exhaust the process.

`torch.load(weights_only=True)` refuses Python objects that are not weights, but it still
builds whatever shapes of plain containers and tensors a file describes, and some of those take
the process down before any error can be caught: a dictionary key nested a million tuples deep
crashes the interpreter when hashed, tuples that reference themselves through the memo expand
exponentially when printed, `bytearray(6e9)` or a storage declaring 6e9 elements allocate
gigabytes from a few hundred bytes, and a zero-stride tensor view claims a shape no file holds.

This module walks the pickle's opcodes (`pickletools.genops`, which executes nothing) and
simulates only what matters for those limits: the nesting depth and expanded size of every
object, the globals named, the storages declared, and the extent of every tensor view. A file
passes only if every object stays within plain limits and every callable is one of the few a
state dict needs. The scan is linear in the pickle's size, which for a checkpoint holds only
the structure (the tensor bytes live in separate zip members): a 64 MB RRDB's `data.pkl` is
about 60 kB (see SECURITY.md for the measured cost).
"""

from __future__ import annotations

import math
import pickletools
import warnings
from dataclasses import dataclass, field
from typing import IO, Any

import torch

from ..errors import printable

#: Deepest nesting of containers a checkpoint may use (real ones: about 5).
MAX_DEPTH = 64
#: Most nodes an object may expand to when every memo reference is followed (a state dict of
#: 2000 tensors: about 50 000).
MAX_EXPANDED = 5_000_000
#: Most nodes a dictionary key may expand to (state dict keys are strings: 1).
MAX_KEY_EXPANDED = 256
#: Most opcodes one pickle may hold (a state dict of 2000 tensors: about 60 000).
MAX_OPCODES = 20_000_000
#: Most dimensions a tensor may have.
MAX_DIMS = 16

#: What the scan allows to be called or named: the rebuild functions of plain CPU tensors and
#: parameters, ordered dicts and a few harmless values. Everything else torch's restricted
#: unpickler would allow (bytearray, device-tensor and meta-tensor rebuilds, sparse, nested and
#: quantised tensors) is refused: none is needed for weights, several allocate without limit.
TENSOR_REBUILDS = {"torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor"}
PARAMETER_REBUILDS = {"torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state"}
CONTAINERS = {"collections.OrderedDict", "collections.Counter", "builtins.set", "builtins.frozenset"}
VALUES = {"torch.Size", "torch.device", "_codecs.encode", "builtins.complex", "torch.serialization._get_layout"}
TYPES = {"torch.Tensor", "torch.nn.parameter.Parameter"}
FROM_TYPE = "torch._tensor._rebuild_from_type_v2"


class PickleRefused(Exception):
    """The pickle breaks a limit. `unsafe`: it names something that is not plain weights (as
    opposed to being malformed or inconsistent, e.g. declaring more data than it holds)."""

    def __init__(self, reason: str, unsafe: bool = True):
        super().__init__(reason)
        self.unsafe = unsafe


@dataclass
class Storage:
    element: int  # bytes per element
    numel: int

    @property
    def nbytes(self) -> int:
        return self.element * self.numel


@dataclass
class ScanResult:
    storages: dict[str, Storage] = field(default_factory=dict)
    value: Any = None  # the top object, when it is a plain value (the legacy format's magic number)


class _Node:
    """A container or call result: its kind, its depth and expanded size, and what the checks
    need of it (the items of small tuples, a global's name, a storage)."""

    __slots__ = ("kind", "depth", "size", "items", "name", "storage")

    def __init__(self, kind: str, children=(), name: str | None = None, storage: Storage | None = None):
        self.kind, self.name, self.storage = kind, name, storage
        self.items = list(children) if kind == "tuple" else None
        self.depth, self.size = 1, 1
        self.add(children)

    def add(self, children) -> None:
        for child in children:
            depth, size = _depth(child), _size(child)
            if depth + 1 > self.depth:
                self.depth = depth + 1
                if self.depth > MAX_DEPTH:
                    raise PickleRefused(f"nests objects more than {MAX_DEPTH} levels deep")
            self.size = min(self.size + size, MAX_EXPANDED + 1)
        if self.size > MAX_EXPANDED:
            raise PickleRefused(f"describes an object of more than {MAX_EXPANDED} parts (self-referencing structures)")


class _Mark:
    pass


_MARK = _Mark()


def _depth(value) -> int:
    return value.depth if isinstance(value, _Node) else 1


def _size(value) -> int:
    return value.size if isinstance(value, _Node) else 1


def _element_sizes() -> dict[str, int]:
    """Bytes per element of every legacy storage class (`torch.FloatStorage`: 4, ...)."""
    sizes = {"torch.UntypedStorage": 1, "torch.storage.UntypedStorage": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reading a legacy storage class's dtype warns that TypedStorage is deprecated
        for name in dir(torch):
            if name.endswith("Storage") and not name.startswith("Q"):  # quantised storages: not weights Tilewise runs
                dtype = getattr(getattr(torch, name), "dtype", None)
                if isinstance(dtype, torch.dtype):
                    sizes[f"torch.{name}"] = dtype.itemsize
    return sizes


_ELEMENT_SIZES: dict[str, int] | None = None


def _dtype_names() -> set[str]:
    return {str(getattr(torch, n)) for n in dir(torch) if isinstance(getattr(torch, n, None), torch.dtype)}


def scan(stream: IO[bytes], result: ScanResult | None = None) -> ScanResult:
    """Walks one pickle from `stream` (left just after its STOP); raises PickleRefused."""
    global _ELEMENT_SIZES
    if _ELEMENT_SIZES is None:
        _ELEMENT_SIZES = _element_sizes()
    result = result or ScanResult()
    stack: list[Any] = []
    memo: dict[Any, Any] = {}  # keyed by the pickle's own memo indices
    dtypes = None
    count = 0

    def pop_mark() -> list:
        items = []
        while stack:
            item = stack.pop()
            if item is _MARK:
                items.reverse()
                return items
            items.append(item)
        raise PickleRefused("is not a valid pickle (a mark is missing)", unsafe=False)

    def pop() -> Any:
        if not stack or stack[-1] is _MARK:
            raise PickleRefused("is not a valid pickle (its stack runs empty)", unsafe=False)
        return stack.pop()

    def mutate(target, children) -> None:
        if not isinstance(target, _Node) or target.kind not in ("list", "dict", "set", "object"):
            raise PickleRefused("is not a valid pickle (items added to a value that holds none)", unsafe=False)
        target.add(children)

    def check_key(key) -> None:
        if _size(key) > MAX_KEY_EXPANDED:
            raise PickleRefused("uses a dictionary key that is a large structure, not a name")

    try:
        for opcode, arg, _pos in pickletools.genops(stream):
            count += 1
            if count > MAX_OPCODES:
                raise PickleRefused(f"holds more than {MAX_OPCODES} pickle instructions")
            name = opcode.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                top = pop()
                result.value = None if isinstance(top, _Node) else top
                return result
            if name == "MARK":
                stack.append(_MARK)
            elif name in (
                "INT",
                "BININT",
                "BININT1",
                "BININT2",
                "LONG",
                "LONG1",
                "LONG4",
                "FLOAT",
                "BINFLOAT",
                "STRING",
                "BINSTRING",
                "SHORT_BINSTRING",
                "UNICODE",
                "BINUNICODE",
                "SHORT_BINUNICODE",
                "BINUNICODE8",
                "BINBYTES",
                "SHORT_BINBYTES",
                "BINBYTES8",
                "BYTEARRAY8",
            ):
                stack.append(arg)
            elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
                stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
            elif name == "EMPTY_TUPLE":
                stack.append(_Node("tuple"))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = [pop() for _ in range(n)][::-1]
                stack.append(_Node("tuple", items))
            elif name == "TUPLE":
                stack.append(_Node("tuple", pop_mark()))
            elif name == "EMPTY_LIST":
                stack.append(_Node("list"))
            elif name == "LIST":
                stack.append(_Node("list", pop_mark()))
            elif name == "APPEND":
                item = pop()
                mutate(stack[-1] if stack else None, [item])
            elif name == "APPENDS":
                items = pop_mark()
                mutate(stack[-1] if stack else None, items)
            elif name == "EMPTY_DICT":
                stack.append(_Node("dict"))
            elif name == "DICT":
                items = pop_mark()
                for key in items[::2]:
                    check_key(key)
                stack.append(_Node("dict", items))
            elif name == "SETITEM":
                value, key = pop(), pop()
                check_key(key)
                mutate(stack[-1] if stack else None, [key, value])
            elif name == "SETITEMS":
                items = pop_mark()
                for key in items[::2]:
                    check_key(key)
                mutate(stack[-1] if stack else None, items)
            elif name == "EMPTY_SET":
                stack.append(_Node("set"))
            elif name == "ADDITEMS":
                items = pop_mark()
                mutate(stack[-1] if stack else None, items)
            elif name == "FROZENSET":
                stack.append(_Node("set", pop_mark()))
            elif name == "POP":
                pop()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                stack.append(stack[-1] if stack else pop())
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1] if stack else pop()
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else pop()
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise PickleRefused("is not a valid pickle (it refers to an object it never stored)", unsafe=False)
                stack.append(memo[arg])
            elif name in ("GLOBAL", "STACK_GLOBAL"):
                if name == "GLOBAL":
                    module, _, attribute = str(arg).partition(" ")
                else:
                    attribute, module = pop(), pop()
                    if not isinstance(module, str) or not isinstance(attribute, str):
                        raise PickleRefused("names a Python object in a malformed way")
                full = f"{module}.{attribute}"
                if dtypes is None:
                    dtypes = _dtype_names()
                allowed = TENSOR_REBUILDS | PARAMETER_REBUILDS | CONTAINERS | VALUES | TYPES | {FROM_TYPE}
                if full not in allowed and full not in _ELEMENT_SIZES and full not in dtypes:
                    raise PickleRefused(f"contains the Python object '{printable(full)}'")
                stack.append(_Node("global", name=full))
            elif name == "BINPERSID":
                stack.append(_storage(pop(), result))
            elif name == "REDUCE":
                args, function = pop(), pop()
                stack.append(_call(function, args))
            elif name == "NEWOBJ":
                args, cls = pop(), pop()
                stack.append(_call(cls, args))
            elif name == "NEWOBJ_EX":
                _kwargs, args, cls = pop(), pop(), pop()
                stack.append(_call(cls, args))
            elif name == "BUILD":
                state = pop()
                mutate(stack[-1] if stack else None, [state])
            else:  # PERSID, OBJ, INST, EXT1/2/4, NEXT_BUFFER, READONLY_BUFFER: never in a torch checkpoint
                raise PickleRefused(f"uses the pickle instruction {name}, which weights never need")
    except PickleRefused:
        raise
    except (ValueError, EOFError, TypeError, KeyError, IndexError, UnicodeDecodeError, OverflowError) as error:
        raise PickleRefused(f"is not a valid pickle ({type(error).__name__})", unsafe=False) from None
    raise PickleRefused("is not a valid pickle (it ends before its STOP instruction)", unsafe=False)


def _storage(pid, result: ScanResult) -> _Node:
    """A persistent id: ('storage', storage class, key, location, numel[, view metadata])."""
    items = pid.items if isinstance(pid, _Node) and pid.kind == "tuple" else None
    if not items or len(items) not in (5, 6) or items[0] != "storage":
        raise PickleRefused("refers to external data that is not a tensor storage")
    kind, key, location, numel = items[1], items[2], items[3], items[4]
    sizes = _ELEMENT_SIZES or {}
    element = sizes.get(kind.name or "") if isinstance(kind, _Node) and kind.kind == "global" else None
    if element is None:
        raise PickleRefused("declares a storage of an unknown type")
    if not isinstance(key, str) or len(key) > 64 or not isinstance(location, str) or len(location) > 64:
        raise PickleRefused("declares a storage with a malformed name", unsafe=False)
    if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
        raise PickleRefused("declares a storage of a negative or non-integer size", unsafe=False)
    known = result.storages.get(key)
    if known is not None and (known.element, known.numel) != (element, numel):
        raise PickleRefused(f"declares storage '{key}' twice with different sizes", unsafe=False)
    storage = Storage(element, numel)
    result.storages[key] = storage
    return _Node("storage", storage=storage)


def _ints(value, what: str) -> list[int]:
    if not isinstance(value, _Node) or value.kind != "tuple" or value.items is None or len(value.items) > MAX_DIMS:
        raise PickleRefused(f"declares a tensor {what} that is not a short tuple of integers", unsafe=False)
    numbers = value.items
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        raise PickleRefused(f"declares a tensor {what} with a negative or non-integer entry", unsafe=False)
    return numbers


def _tensor(args: _Node) -> _Node:
    """(storage, offset, size, stride, ...) of `_rebuild_tensor_v2`: the view must lie inside its
    storage and hold no more elements than it (no zero-stride views that claim a large shape)."""
    items = args.items or []
    if len(items) < 4 or not isinstance(items[0], _Node) or items[0].kind != "storage":
        raise PickleRefused("rebuilds a tensor without a storage", unsafe=False)
    storage = items[0].storage
    if storage is None:
        raise PickleRefused("rebuilds a tensor without a storage", unsafe=False)
    offset = items[1]
    size, stride = _ints(items[2], "shape"), _ints(items[3], "stride")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0 or len(size) != len(stride):
        raise PickleRefused("declares a tensor view with a malformed offset or stride", unsafe=False)
    numel = math.prod(size)
    if numel:
        extent = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
        if extent > storage.numel or numel > storage.numel:
            raise PickleRefused(
                f"declares a tensor of shape {tuple(size)} over a storage of {storage.numel} elements "
                "(a view larger than its data)",
                unsafe=False,
            )
    node = _Node("tensor", args.items)
    return node


def _call(function, args) -> Any:
    if not isinstance(function, _Node) or function.kind != "global":
        raise PickleRefused("calls something that is not a named function")
    if not isinstance(args, _Node) or args.kind != "tuple":
        raise PickleRefused("calls a function with malformed arguments", unsafe=False)
    name = function.name or ""
    if name in TENSOR_REBUILDS:
        return _tensor(args)
    if name in PARAMETER_REBUILDS:
        first = args.items[0] if args.items else None
        if not isinstance(first, _Node) or first.kind != "tensor":
            raise PickleRefused("rebuilds a parameter from something that is not a tensor", unsafe=False)
        return _Node("tensor", args.items)
    if name == FROM_TYPE:  # (rebuild function, tensor type, its arguments, state)
        items = args.items or []
        if (
            len(items) != 4
            or not isinstance(items[0], _Node)
            or items[0].kind != "global"
            or not isinstance(items[1], _Node)
            or items[1].name not in TYPES
        ):
            raise PickleRefused("rebuilds a tensor subclass Tilewise does not load")
        inner = _call(items[0], items[2])
        if not isinstance(inner, _Node) or inner.kind != "tensor":
            raise PickleRefused("rebuilds a tensor subclass from something that is not a tensor", unsafe=False)
        return _Node("tensor", items)
    if name in CONTAINERS:
        return _Node("dict" if name != "builtins.set" and name != "builtins.frozenset" else "set", args.items)
    if name in VALUES:
        return _Node("object", args.items)
    raise PickleRefused(f"calls '{printable(name)}', which weights never need")
