"""What a pickle would build, checked before anything is built.

:func:`inspect_pickle` walks a pickle's opcodes (``pickletools.genops``) and replays them on a symbolic stack: nothing
is imported, called or allocated. It refuses (:class:`PickleRefused`) a pickle that

* names a global outside the allowlist, or calls an allowed one with arguments outside what nnU-Net and stunet files
  hold: numpy dtypes only of the kinds b, i, u, f, c, U, S (no object, void or structured dtypes, whose raw bytes
  numpy would take for pointers), ``_codecs.encode`` only with latin-1 (what protocol-2 bytes use; other codecs cost
  quadratic time), numpy arrays only rebuilt from their own bytes, tensors only views inside their storage;
* exceeds a size limit: opcodes, memo entries and indices, memo reads (shared references), nesting depth, total text,
  or the size of any one object counted as a tree (``b = [a, a]; c = [b, b]; ...`` doubles at each level: a kilobyte
  pickle that a JSON writer or a recursive walk would expand into billions of nodes);
* declares more bytes than it holds, or tensor storages that the archive does not hold (``storage_bytes``).

``trust=True`` skips the allowlist and the argument checks (the file may hold any object) but keeps every limit.
The limits are sized far above what real files need (measured: a released nnU-Net v1 ``.model`` holds about 5,000
opcodes, 1,000 memo entries, 700 memo reads and nesting depth 5; its ``.model.pkl`` 560 opcodes).
"""
from __future__ import annotations

import io
import pickletools
import re
from dataclasses import dataclass
from typing import BinaryIO, Callable

MIB = 1 << 20


class PickleRefused(Exception):
    """The pickle would build something the reader does not allow; the message says what."""


@dataclass(frozen=True)
class Limits:
    opcodes: int = 20_000_000
    memo: int = 4_000_000  # entries and highest index (CPython's unpickler allocates its memo up to the index)
    memo_reads: int = 8_000_000
    depth: int = 100  # nesting of containers (and of MARKs)
    text_bytes: int = 1024 * MIB  # strings and bytes, all together
    nodes: int = 20_000_000  # any one object's size counted as a tree: shared references counted each time
    array_elements: int = 1 << 16  # the shape numpy's _reconstruct allocates before the bytes arrive (real: 0)
    itemsize: int = MIB  # of a numpy dtype (strings)
    big_int_bits: int = 256


LIMITS = Limits()

# -- the allowlist -----------------------------------------------------------------------------------------------
_DTYPE_STRING = re.compile(r"[<>|=]?(?:\?|b1|[iu][1248]|f(?:2|4|8|16)|c(?:8|16|32)|[US]\d{0,12})")
_TORCH_STORAGES = {f"torch.{name}Storage": size for name, size in (
    ("Bool", 1), ("Byte", 1), ("Char", 1), ("Short", 2), ("Int", 4), ("Long", 8), ("Half", 2), ("BFloat16", 2),
    ("Float", 4), ("Double", 8), ("ComplexFloat", 8), ("ComplexDouble", 16))}
_TORCH_DTYPES = {f"torch.{name}": size for name, size in (
    ("bool", 1), ("uint8", 1), ("int8", 1), ("int16", 2), ("int32", 4), ("int64", 8), ("float16", 2),
    ("bfloat16", 2), ("float32", 4), ("float64", 8), ("complex64", 8), ("complex128", 16), ("half", 2),
    ("float", 4), ("double", 8), ("long", 8), ("int", 4), ("short", 2))}
_NUMPY_DTYPE_CLASSES = {f"numpy.dtypes.{name}DType" for name in (
    "Bool", "Int8", "UInt8", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64", "Float16", "Float32",
    "Float64", "LongDouble", "Complex64", "Complex128", "CLongDouble", "Str", "Bytes", "Byte", "UByte", "Short",
    "UShort", "Int", "UInt", "Long", "ULong", "LongLong", "ULongLong")}
# globals that may appear as values but are never called
VALUE_GLOBALS = {"numpy.ndarray", *_TORCH_STORAGES, *_TORCH_DTYPES, *_NUMPY_DTYPE_CLASSES}
NUMPY_PREFIXES = ("numpy._core.multiarray.", "numpy.core.multiarray.")


class _Sym:
    """A value on the symbolic stack: its kind, what validators need of it, and its size as a tree."""
    __slots__ = ("kind", "value", "args", "weight", "depth", "sealed", "length")

    def __init__(self, kind: str, value=None, args: tuple = (), weight: int = 1, depth: int = 0, length: int = 0):
        self.kind, self.value, self.args = kind, value, args
        self.weight, self.depth, self.sealed, self.length = weight, depth, False, length


_MARK = object()


def _const(sym: _Sym, *types) -> bool:
    return sym.kind == "const" and isinstance(sym.value, types) and not isinstance(sym.value, _Long)


class _Long:
    """A long string or bytes constant, kept by length only."""
    __slots__ = ("length", "type")

    def __init__(self, length: int, type_: type):
        self.length, self.type = length, type_


def _int_tuple(sym: _Sym, what: str) -> list[int]:
    if sym.kind != "tuple" or not all(_const(a, int) and not isinstance(a.value, bool) for a in sym.args):
        raise PickleRefused(f"{what} is not a tuple of integers")
    return [a.value for a in sym.args]


def _bytes_length(sym: _Sym) -> int | None:
    """Length of a bytes argument (a constant, or latin-1 ``_codecs.encode`` of a string), else None."""
    if sym.kind == "const" and isinstance(sym.value, _Long) and sym.value.type is bytes:
        return sym.value.length
    if _const(sym, bytes):
        return len(sym.value)
    if sym.kind == "call" and sym.value == "_codecs.encode":
        return sym.length
    return None


class _Walker:
    def __init__(self, trust: bool, limits: Limits, storage_bytes: Callable[[str, int], None] | None):
        self.trust, self.limits, self.storage_bytes = trust, limits, storage_bytes
        self.stack: list = []
        self.metastack: list[list] = []
        self.memo: dict[int, _Sym] = {}
        self.reads = self.text = 0
        self.storages: dict[str, int] = {}

    # -- bookkeeping -------------------------------------------------------------------------------------------
    def _use(self, *syms: _Sym) -> None:
        for sym in syms:
            if sym is _MARK:
                raise PickleRefused("malformed pickle (a MARK where a value belongs)")
            sym.sealed = True

    def _make(self, kind: str, value=None, args: tuple = (), length: int = 0) -> _Sym:
        weight = 1 + sum(a.weight for a in args)
        depth = 1 + max((a.depth for a in args), default=0)
        sym = _Sym(kind, value, args, weight, depth, length)
        self._check_size(sym)
        return sym

    def _check_size(self, sym: _Sym) -> None:
        if sym.weight > self.limits.nodes:
            raise PickleRefused(f"an object whose shared references expand to more than {self.limits.nodes:,} "
                                f"objects (a reference bomb)")
        if sym.depth > self.limits.depth:
            raise PickleRefused(f"objects nested more than {self.limits.depth} levels deep")

    def _grow(self, container: _Sym, items: list[_Sym]) -> None:
        if container.kind not in ("list", "dict", "set", "call", "other") or (
                container.kind == "call" and container.value != "collections.OrderedDict" and not self.trust):
            raise PickleRefused(f"adds items to a {container.value or container.kind}")
        if container.sealed and not self.trust:
            raise PickleRefused("changes a container after it was used (shared or cyclic references)")
        self._use(*items)
        container.weight += sum(i.weight for i in items)
        container.depth = max(container.depth, 1 + max((i.depth for i in items), default=0))
        self._check_size(container)

    def pop(self) -> _Sym:
        if not self.stack:
            raise PickleRefused("malformed pickle (stack underflow)")
        sym = self.stack.pop()
        if sym is _MARK:
            raise PickleRefused("malformed pickle (a MARK where a value belongs)")
        return sym

    def pop_mark(self) -> list[_Sym]:
        if not self.metastack:
            raise PickleRefused("malformed pickle (no MARK)")
        items, self.stack = self.stack, self.metastack.pop()
        return items

    def top(self) -> _Sym:
        if not self.stack or self.stack[-1] is _MARK:
            raise PickleRefused("malformed pickle (stack underflow)")
        return self.stack[-1]

    # -- globals and calls -------------------------------------------------------------------------------------
    def global_(self, module: str, name: str) -> _Sym:
        full = f"{module}.{name}"
        if not self.trust and full not in VALUE_GLOBALS and full not in _CALLS:
            raise PickleRefused(f"it references {full}")
        return _Sym("global", full)

    def call(self, func: _Sym, args: list[_Sym]) -> _Sym:
        self._use(func, *args)
        if func.kind != "global":
            if self.trust:
                return self._make("other", None, tuple(args))
            raise PickleRefused(f"calls a {func.kind}, not a global")
        validate = _CALLS.get(func.value)
        if validate is None:
            if self.trust:
                return self._make("other", func.value, tuple(args))
            raise PickleRefused(f"calls {func.value}, which may only appear as a value")
        length = 0
        if not self.trust:
            length = validate(self, args) or 0
        return self._make("call", func.value, tuple(args), length)

    def build(self, target: _Sym, state: _Sym) -> None:
        self._use(state)
        if not self.trust:
            if target.kind == "call" and target.value == "numpy.dtype":
                _dtype_state(target, state, self.limits)
            elif target.kind == "call" and target.value.endswith("._reconstruct"):
                _array_state(target, state, self.limits)
            elif _is_ordered_dict(target) and state.kind == "dict":
                pass  # a module's state_dict: its _metadata attribute (layer versions)
            else:
                raise PickleRefused(f"sets the state of a {target.value or target.kind}")
            if target.sealed:
                raise PickleRefused("sets the state of an object after it was used")
        target.weight += state.weight
        target.depth = max(target.depth, state.depth + 1)
        self._check_size(target)

    def persistent(self, pid: _Sym) -> _Sym:
        self._use(pid)
        if self.storage_bytes is None:
            raise PickleRefused("holds a persistent reference where none is expected")
        args = pid.args if pid.kind == "tuple" else ()
        if len(args) not in (5, 6) or not _const(args[0], str) or args[0].value != "storage":
            raise PickleRefused("holds a persistent reference that is not a tensor storage")
        kind, key, location, numel = args[1], args[2], args[3], args[4]
        size = None
        if kind.kind == "global":
            size = _TORCH_STORAGES.get(kind.value) or _TORCH_DTYPES.get(kind.value)
        if size is None:
            raise PickleRefused("holds a storage of an unsupported type")
        if not (_const(key, str) and _const(location, str) and _const(numel, int)) or numel.value < 0:
            raise PickleRefused("holds a malformed storage reference")
        nbytes = numel.value * size
        if key.value in self.storages:
            if self.storages[key.value] != nbytes:
                raise PickleRefused(f"declares storage {key.value} twice with different sizes")
        else:
            self.storages[key.value] = nbytes
            self.storage_bytes(key.value, nbytes)
        return _Sym("storage", numel.value, weight=1)

    # -- the walk ----------------------------------------------------------------------------------------------
    def run(self, stream: BinaryIO) -> _Sym:
        limits = self.limits
        count = 0
        try:
            for op, arg, pos in pickletools.genops(stream):
                count += 1
                if count > limits.opcodes:
                    raise PickleRefused(f"more than {limits.opcodes:,} pickle opcodes")
                result = self.step(op.name, arg)
                if result is not None:
                    return result
        except PickleRefused:
            raise
        except (ValueError, EOFError, UnicodeDecodeError, OverflowError) as e:
            raise PickleRefused(f"truncated or malformed pickle ({str(e).splitlines()[0][:160]})") from e
        raise PickleRefused("truncated pickle (no STOP)")

    def step(self, name: str, arg):  # noqa: C901 - one branch per opcode
        limits = self.limits
        if isinstance(arg, (str, bytes, bytearray)):
            self.text += len(arg)
            if self.text > limits.text_bytes:
                raise PickleRefused(f"more than {limits.text_bytes // MIB} MiB of strings and bytes")
        if name in ("PROTO", "FRAME"):
            return None
        if name == "STOP":
            result = self.pop()
            if self.stack or self.metastack:
                raise PickleRefused("malformed pickle (values left on the stack at STOP)")
            return result
        if name in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"):
            if isinstance(arg, int) and arg.bit_length() > limits.big_int_bits:
                raise PickleRefused(f"an integer of more than {limits.big_int_bits} bits")
            self.stack.append(_Sym("const", arg))
        elif name in ("STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
                      "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BYTEARRAY8"):
            value = bytes(arg) if isinstance(arg, bytearray) else arg
            if len(value) > 4096:
                value = _Long(len(value), type(value))
            self.stack.append(_Sym("const", value))
        elif name in ("NONE", "NEWTRUE", "NEWFALSE", "FLOAT", "BINFLOAT"):
            self.stack.append(_Sym("const", {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}.get(name, arg)))
        elif name == "EMPTY_TUPLE":
            self.stack.append(_Sym("tuple"))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            if len(self.stack) < n:
                raise PickleRefused("malformed pickle (stack underflow)")
            items = [self.pop() for _ in range(n)][::-1]
            self._use(*items)
            self.stack.append(self._make("tuple", None, tuple(items)))
        elif name == "TUPLE":
            items = self.pop_mark()
            self._use(*items)
            self.stack.append(self._make("tuple", None, tuple(items)))
        elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"):
            self.stack.append(_Sym({"EMPTY_LIST": "list", "EMPTY_DICT": "dict", "EMPTY_SET": "set"}[name]))
        elif name in ("LIST", "DICT", "FROZENSET"):
            items = self.pop_mark()
            if name == "DICT" and len(items) % 2:
                raise PickleRefused("malformed pickle (odd DICT)")
            sym = _Sym({"LIST": "list", "DICT": "dict", "FROZENSET": "frozenset"}[name])
            self._grow(sym, items)
            self.stack.append(sym)
        elif name in ("APPEND", "SETITEM"):
            items = [self.pop() for _ in range(1 if name == "APPEND" else 2)][::-1]
            self._grow(self.top(), items)
        elif name in ("APPENDS", "SETITEMS", "ADDITEMS"):
            items = self.pop_mark()
            if name == "SETITEMS" and len(items) % 2:
                raise PickleRefused("malformed pickle (odd SETITEMS)")
            self._grow(self.top(), items)
        elif name == "POP":
            if self.stack:
                self.stack.pop()
            else:
                self.pop_mark()
        elif name == "DUP":
            self.stack.append(self.top())
        elif name == "MARK":
            self.metastack.append(self.stack)
            self.stack = []
            if len(self.metastack) > limits.depth:
                raise PickleRefused(f"MARKs nested more than {limits.depth} levels deep")
        elif name == "POP_MARK":
            self.pop_mark()
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            self.reads += 1
            if self.reads > limits.memo_reads:
                raise PickleRefused(f"more than {limits.memo_reads:,} shared references (memo reads)")
            if arg not in self.memo:
                raise PickleRefused(f"malformed pickle (reads memo entry {arg}, never stored)")
            self.stack.append(self.memo[arg])
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            index = len(self.memo) if name == "MEMOIZE" else arg
            if not isinstance(index, int) or not 0 <= index < limits.memo:
                raise PickleRefused(f"a memo index of {index} (limit {limits.memo:,})")
            self.memo[index] = self.top()
        elif name == "GLOBAL":
            module, _, attr = arg.partition(" ")
            self.stack.append(self.global_(module, attr))
        elif name == "STACK_GLOBAL":
            attr, module = self.pop(), self.pop()
            if not (_const(module, str) and _const(attr, str)):
                raise PickleRefused("malformed pickle (STACK_GLOBAL of non-strings)")
            self.stack.append(self.global_(module.value, attr.value))
        elif name == "REDUCE":
            args, func = self.pop(), self.pop()
            if args.kind != "tuple":
                raise PickleRefused("malformed pickle (REDUCE without an argument tuple)")
            self.stack.append(self.call(func, list(args.args)))
        elif name == "NEWOBJ":
            args, cls = self.pop(), self.pop()
            if args.kind != "tuple":
                raise PickleRefused("malformed pickle (NEWOBJ without an argument tuple)")
            self.stack.append(self.call(cls, list(args.args)))
        elif name == "NEWOBJ_EX":
            kwargs, args, cls = self.pop(), self.pop(), self.pop()
            if not self.trust:
                raise PickleRefused("builds an object with keyword arguments (NEWOBJ_EX)")
            self.stack.append(self.call(cls, [args, kwargs]))
        elif name == "INST":
            module, _, attr = arg.partition(" ")
            items = self.pop_mark()
            self.stack.append(self.call(self.global_(module, attr), items))
        elif name == "OBJ":
            items = self.pop_mark()
            if not items:
                raise PickleRefused("malformed pickle (OBJ without a class)")
            self.stack.append(self.call(items[0], items[1:]))
        elif name == "BUILD":
            state = self.pop()
            self.build(self.top(), state)
        elif name == "BINPERSID":
            self.stack.append(self.persistent(self.pop()))
        elif name == "PERSID":
            raise PickleRefused("holds a text persistent reference, which no checkpoint format uses")
        elif name in ("EXT1", "EXT2", "EXT4"):
            raise PickleRefused("uses the copyreg extension registry")
        elif name in ("NEXT_BUFFER", "READONLY_BUFFER"):
            raise PickleRefused("uses out-of-band buffers")
        else:
            raise PickleRefused(f"uses the opcode {name}")
        return None


# -- validators of the allowed calls: raise PickleRefused, or return the result's byte length where it has one ---
def _numpy_dtype(walker: _Walker, args: list[_Sym]):
    if not 1 <= len(args) <= 3 or not _const(args[0], str) or not all(_const(a, bool, int) for a in args[1:]):
        raise PickleRefused("builds a numpy dtype from unexpected arguments")
    if not _DTYPE_STRING.fullmatch(args[0].value):
        raise PickleRefused(f"builds a numpy dtype {args[0].value!r} (only numbers, booleans and strings are "
                            f"allowed: object, void and structured dtypes are not)")
    digits = re.sub(r"\D", "", args[0].value)
    if args[0].value.lstrip("<>|=")[:1] in "US" and digits and int(digits) * 4 > walker.limits.itemsize:
        raise PickleRefused(f"a numpy string dtype {args[0].value!r} larger than {walker.limits.itemsize} bytes")


def _dtype_state(target: _Sym, state: _Sym, limits: Limits) -> None:
    values = state.args if state.kind == "tuple" else ()
    if len(values) not in (8, 9) or not all(v.kind == "const" for v in values):
        raise PickleRefused("sets a numpy dtype's state from unexpected values")
    version, order, subarray, names, fields, elsize, alignment, flags = (v.value for v in values[:8])
    if version not in (3, 4) or order not in ("<", ">", "|", "=") or (subarray, names, fields) != (None, None, None):
        raise PickleRefused("sets a numpy dtype's state to a structured or sub-array dtype")
    if len(values) == 9 and values[8].value is not None:
        raise PickleRefused("sets a numpy dtype's metadata")
    if not (isinstance(elsize, int) and -1 <= elsize <= limits.itemsize and alignment in (-1, 1, 2, 4, 8, 16)):
        raise PickleRefused(f"sets a numpy dtype's item size to {elsize!r} (limit {limits.itemsize})")
    if flags not in (0, 8):  # 8: needs initialisation (strings); others would declare Python objects inside
        raise PickleRefused(f"sets a numpy dtype's flags to {flags!r} (object-holding)")
    target.length = elsize


def _codecs_encode(walker: _Walker, args: list[_Sym]):
    if len(args) != 2 or args[0].kind != "const" or not _const(args[1], str):
        raise PickleRefused("calls _codecs.encode with unexpected arguments")
    if args[1].value.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise PickleRefused(f"calls _codecs.encode with the codec {args[1].value!r} (only latin-1 is allowed)")
    text = args[0].value
    if isinstance(text, _Long) and text.type is str:
        return text.length
    if not isinstance(text, str):
        raise PickleRefused("calls _codecs.encode on a non-string")
    return len(text)


def _is_dtype(sym: _Sym) -> bool:
    return sym.kind == "call" and sym.value == "numpy.dtype"


def _numpy_scalar(walker: _Walker, args: list[_Sym]):
    if len(args) != 2 or not _is_dtype(args[0]) or _bytes_length(args[1]) is None:
        raise PickleRefused("builds a numpy scalar from something other than a dtype and its bytes")


def _numpy_reconstruct(walker: _Walker, args: list[_Sym]):
    if len(args) != 3 or args[0].kind != "global" or args[0].value != "numpy.ndarray" or \
            _bytes_length(args[2]) is None:
        raise PickleRefused("rebuilds a numpy array in an unexpected way")
    shape = _int_tuple(args[1], "a numpy array's initial shape")
    elements = 1
    for n in shape:
        elements *= max(n, 0)
    if elements > walker.limits.array_elements:
        raise PickleRefused(f"allocates a numpy array of shape {tuple(shape)} before its data")


def _array_state(target: _Sym, state: _Sym, limits: Limits) -> None:
    values = state.args if state.kind == "tuple" else ()
    if len(values) != 5 or not _is_dtype(values[2]) or not _const(values[3], bool, int):
        raise PickleRefused("sets a numpy array's state from unexpected values")
    shape = _int_tuple(values[1], "a numpy array's shape")
    data = _bytes_length(values[4])
    if data is None:
        raise PickleRefused("sets a numpy array's data from something other than bytes (an object array?)")
    elements = 1
    for n in shape:
        if n < 0:
            raise PickleRefused(f"a numpy array of shape {tuple(shape)}")
        elements *= n
    itemsize = values[2].length if values[2].length > 0 else _numeric_itemsize(values[2])
    if itemsize is not None and elements * itemsize != data:
        raise PickleRefused(f"a numpy array of shape {tuple(shape)} declares {elements * itemsize:,} bytes but "
                            f"holds {data:,}")


def _numeric_itemsize(dtype: _Sym) -> int | None:
    code = dtype.args[0].value.lstrip("<>|=")
    if code in ("?", "b1"):
        return 1
    digits = re.sub(r"\D", "", code)
    if code[:1] in "US":
        return (int(digits) if digits else 0) * (4 if code[0] == "U" else 1)
    return int(digits) if digits else None


def _ordered_dict(walker: _Walker, args: list[_Sym]):
    if len(args) > 1 or (args and args[0].kind not in ("list", "tuple", "dict")):
        raise PickleRefused("builds an OrderedDict from unexpected arguments")


def _torch_device(walker: _Walker, args: list[_Sym]):
    if not 1 <= len(args) <= 2 or not _const(args[0], str) or len(args[0].value) > 64 or \
            (len(args) == 2 and not _const(args[1], int)):
        raise PickleRefused("builds a torch.device from unexpected arguments")


def _torch_size(walker: _Walker, args: list[_Sym]):
    if len(args) != 1:
        raise PickleRefused("builds a torch.Size from unexpected arguments")
    _int_tuple(args[0], "a torch.Size")


def _rebuild_tensor(walker: _Walker, args: list[_Sym]):
    if len(args) not in (6, 7) or args[0].kind != "storage" or not _const(args[1], int):
        raise PickleRefused("rebuilds a tensor from unexpected arguments")
    size, stride = _int_tuple(args[2], "a tensor's size"), _int_tuple(args[3], "a tensor's stride")
    if len(size) != len(stride) or any(n < 0 for n in size + stride) or args[1].value < 0:
        raise PickleRefused(f"a tensor of size {tuple(size)} and stride {tuple(stride)}")
    numel, last = 1, args[1].value
    for n, s in zip(size, stride):
        numel *= n
        last += (n - 1) * s
    storage = args[0].value
    if numel and (last >= storage or numel > storage):
        raise PickleRefused(f"a tensor of size {tuple(size)} that needs more than its storage of {storage:,} "
                            f"elements")
    metadata_ok = len(args) == 6 or _const(args[6], type(None)) or args[6].kind == "dict" or _is_ordered_dict(args[6])
    if not _const(args[4], bool) or not _is_ordered_dict(args[5]) or not metadata_ok:
        raise PickleRefused("rebuilds a tensor from unexpected arguments")


def _is_ordered_dict(sym: _Sym) -> bool:
    return sym.kind == "call" and sym.value == "collections.OrderedDict"


def _rebuild_parameter(walker: _Walker, args: list[_Sym]):
    if len(args) != 3 or args[0].kind != "call" or args[0].value != "torch._utils._rebuild_tensor_v2" or \
            not _const(args[1], bool) or not _is_ordered_dict(args[2]):
        raise PickleRefused("rebuilds a parameter from unexpected arguments")


_CALLS: dict[str, Callable] = {
    "numpy.dtype": _numpy_dtype, "_codecs.encode": _codecs_encode, "collections.OrderedDict": _ordered_dict,
    "torch.device": _torch_device, "torch.Size": _torch_size, "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    **{prefix + "scalar": _numpy_scalar for prefix in NUMPY_PREFIXES},
    **{prefix + "_reconstruct": _numpy_reconstruct for prefix in NUMPY_PREFIXES},
}


class _Bounded:
    """A reader that refuses reads past the end instead of attempting them (a declared length of 2**60 bytes must
    not become an allocation), and caps lines."""

    def __init__(self, stream: BinaryIO, end: int):
        self.stream, self.end = stream, end

    def read(self, n: int = -1) -> bytes:
        left = self.end - self.stream.tell()
        if n < 0:
            n = left
        if n > left:
            raise PickleRefused(f"declares {n:,} bytes at offset {self.stream.tell():,} but only {max(left, 0):,} "
                                f"remain (truncated or crafted)")
        return self.stream.read(n)

    def readline(self) -> bytes:
        line = self.stream.readline(min(MIB, max(self.end - self.stream.tell(), 0)))
        if not line.endswith(b"\n"):
            raise PickleRefused("a text opcode without its end of line (truncated or crafted)")
        return line

    def tell(self) -> int:
        return self.stream.tell()


def inspect_pickle(stream: BinaryIO | bytes, *, trust: bool = False, limits: Limits = LIMITS,
                   storage_bytes: Callable[[str, int], None] | None = None, end: int | None = None) -> _Sym:
    """Walk one pickle (up to its STOP) from ``stream`` without building it; raise :class:`PickleRefused` if it is
    not allowed. ``storage_bytes(key, nbytes)`` is called for every tensor storage it declares (torch files) and
    may refuse; without it, persistent references are refused. Returns the symbolic result (for tests)."""
    if isinstance(stream, (bytes, bytearray, memoryview)):
        stream = io.BytesIO(stream)
    if end is None:
        position = stream.tell()
        end = stream.seek(0, io.SEEK_END)
        stream.seek(position)
    return _Walker(trust, limits, storage_bytes).run(_Bounded(stream, end))


def constant(sym: _Sym):
    """The value of a constant (None for anything else)."""
    return sym.value if sym.kind == "const" and not isinstance(sym.value, _Long) else None

