"""Read PyTorch ``pytorch_model.bin`` state dicts without PyTorch and without running pickled code.

A ``.bin`` written by ``torch.save`` (PyTorch >= 1.6) is a zip holding ``data.pkl`` (a pickle
describing the tensors), an optional ``byteorder`` record (``little``/``big``) and one raw buffer
per storage. The file is treated as hostile:

- the pickle is scanned first: only the opcodes a state dict needs are allowed (no object
  construction, extensions or out-of-band buffers) and memo indices must be in sequence;
- it is then read by an unpickler that resolves only the handful of names a state dict uses
  (tensor rebuilders, storage types, ``OrderedDict``) to kplm's own stand-ins; any other global
  (``os.system``, ``eval``, ...) is refused before anything runs, the policy of
  ``torch.load(weights_only=True)``;
- every zip entry is size-checked before it is read (declared against expected sizes, the
  archive's size and deflate's maximal ratio); every storage must hold exactly the elements the
  pickle declares; every tensor's offset, size and stride are checked against its storage before
  any element is read, so a tensor can only ever read inside its own storage.

Any malformed input is refused with a one-line ``DataError`` naming the file (and the tensor).

Example:
    state = load_torch_state_dict("bert/pytorch_model.bin")   # {name: numpy array}
"""
import collections
import io
import math
import os
import pickle
import pickletools
import reprlib
import zipfile

import numpy as np

from kplm.errors import DataError

# storage type -> element type of its raw buffer (bfloat16: read as uint16 and widened to
# float32; bool: read as uint8, nonzero is True)
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.uint8,
}
# what a state dict pickle (protocol 2, or 4 for small items) needs; nothing builds objects
_OPCODES = frozenset(
    "PROTO FRAME STOP MARK POP POP_MARK DUP GLOBAL STACK_GLOBAL REDUCE BUILD BINPERSID "
    "BINPUT LONG_BINPUT MEMOIZE BINGET LONG_BINGET EMPTY_DICT DICT SETITEM SETITEMS "
    "EMPTY_LIST LIST APPEND APPENDS EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 NONE NEWTRUE "
    "NEWFALSE BININT BININT1 BININT2 LONG1 BINFLOAT BINUNICODE SHORT_BINUNICODE BINBYTES "
    "SHORT_BINBYTES".split())
_MAX_PICKLE_BYTES = 1 << 30
_MAX_DEFLATE_RATIO = 1100  # deflate cannot expand more than 1032:1
_MAX_DIMS = 32
_MAX_TEXT = 200
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80


class _Bad(Exception):
    """A malformed part of the archive; turned into a ``DataError`` naming the file."""


def _short(value):
    """``repr(value)``, bounded in depth and length (~200 characters) and on one line."""
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a repr must never be the error
        text = f"<{type(value).__name__}>"
    return _clip(text)


def _one_line(text):
    """``text`` with its line breaks escaped."""
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


def _clip(text):
    """``text`` on one line, cut to ~200 characters."""
    text = _one_line(text)
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "..."


def _is_int(value):
    """True for a Python integer that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


class _Record:
    """Base of the unpickler's stand-ins: pickle's BUILD may not set their state."""

    def __setstate__(self, state):
        raise _Bad("the pickle sets the state of a tensor or storage record, which a state "
                   "dict never does")


class _StorageType(_Record):
    """``torch.FloatStorage`` and friends."""

    def __init__(self, name):
        self.name = name


class _Storage(_Record):
    """A storage the pickle refers to: its type, its key in ``data/`` and its element count."""

    def __init__(self, type_name, key, numel):
        self.type_name, self.key, self.numel = type_name, key, numel


class _Tensor(_Record):
    """A tensor as the pickle describes it; checked and read by ``_materialize``."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor(*args):
    """Stand-in for ``torch._utils._rebuild_tensor(_v2)(storage, offset, size, stride, ...)``."""
    if len(args) < 4:
        raise _Bad(f"a tensor record has {len(args)} fields, expected (storage, offset, size, "
                   "stride, ...)")
    return _Tensor(*args[:4])


def _rebuild_parameter(data, *_ignored):
    """Stand-in for ``torch._utils._rebuild_parameter``: a parameter is its tensor."""
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


def _check_opcodes(data):
    """Refuse a pickle with an opcode outside ``_OPCODES`` or a memo index out of sequence
    (a huge index makes the C unpickler allocate a huge memo)."""
    puts = 0
    try:
        for op, arg, pos in pickletools.genops(data):
            if op.name not in _OPCODES:
                raise _Bad(f"the pickle uses opcode {op.name} at byte {pos}, which a state dict "
                           "never needs")
            if op.name in ("BINPUT", "LONG_BINPUT"):
                if arg > puts:
                    raise _Bad(f"the pickle stores memo entry {arg} at byte {pos}, expected at "
                               f"most {puts}")
                puts += 1
            elif op.name == "MEMOIZE":
                puts += 1
    except ValueError as e:  # truncated data, unknown opcode
        raise _Bad(f"malformed pickle: {_clip(e)}") from None


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only ``_ALLOWED`` globals and ``torch.*Storage``; storages become ``_Storage``."""

    def __init__(self, data):
        super().__init__(io.BytesIO(data))
        self.storages = {}

    def find_class(self, module, name):
        """The stand-in for ``module.name``, or a refusal."""
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise _Bad(f"refusing to load {_clip(module)}.{_clip(name)}: only tensors and dicts of "
                   "tensors are read from PyTorch files (convert it to model.safetensors to be "
                   "sure)")

    def persistent_load(self, pid):
        """``('storage', torch.XStorage, key, location, numel)`` -> the ``_Storage``."""
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise _Bad(f"unexpected storage record {_short(pid)}, expected ('storage', "
                       "storage type, key, location, element count)")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise _Bad(f"storage record {_short(pid)} has type {_short(storage_type)}, expected "
                       f"one of torch.{', torch.'.join(_STORAGE_DTYPES)}")
        if not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise _Bad(f"storage record {_short(pid)}: expected a string key and an element "
                       "count >= 0")
        storage = self.storages.setdefault(key, _Storage(storage_type.name, key, numel))
        if (storage.type_name, storage.numel) != (storage_type.name, numel):
            raise _Bad(f"storage {_short(key)} is declared as {storage.numel} {storage.type_name} "
                       f"elements and as {numel} {storage_type.name} elements")
        return storage


def _read(archive, name, size_on_disk, expected=None, limit=None):
    """The bytes of entry ``name``, its declared sizes checked first (bomb- and truncation-safe)."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise _Bad(f"the archive has no entry {_short(name)}") from None
    if info.flag_bits & 0x1:
        raise _Bad(f"entry {_short(name)} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _Bad(f"entry {_short(name)} uses compression method {info.compress_type}, "
                   "expected stored (or deflated)")
    if expected is not None and info.file_size != expected:
        raise _Bad(f"entry {_short(name)} holds {info.file_size} bytes, expected {expected}")
    if limit is not None and info.file_size > limit:
        raise _Bad(f"entry {_short(name)} holds {info.file_size} bytes, expected at most {limit}")
    stored = info.compress_type == zipfile.ZIP_STORED
    if (info.header_offset + info.compress_size > size_on_disk
            or (stored and info.compress_size != info.file_size)
            or info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 1024):
        raise _Bad(f"entry {_short(name)} declares {info.file_size} bytes in "
                   f"{info.compress_size} at byte {info.header_offset}, which the "
                   f"{size_on_disk}-byte archive cannot hold (truncated or forged)")
    try:
        data = archive.read(name)
    except Exception as e:  # noqa: BLE001 - bad CRC, truncated data, bad local header, ...
        raise _Bad(f"cannot read entry {_short(name)}: {type(e).__name__}: {_clip(e)}") from None
    if len(data) != info.file_size:
        raise _Bad(f"entry {_short(name)} holds {len(data)} bytes, expected {info.file_size}")
    return data


def _read_storage(archive, prefix, storage, big_endian, size_on_disk):
    """The storage as a 1-D native-order array (bfloat16 widened to float32, bool as bool)."""
    dtype = np.dtype(_STORAGE_DTYPES[storage.type_name])
    name = f"{prefix}/data/{storage.key}"
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise _Bad(f"the archive has no entry {_short(name)} for storage "
                   f"{_short(storage.key)}") from None
    if info.file_size % dtype.itemsize:
        raise _Bad(f"entry {_short(name)} holds {info.file_size} bytes, not a whole number of "
                   f"{dtype.itemsize}-byte {storage.type_name} elements")
    if info.file_size != storage.numel * dtype.itemsize:
        raise _Bad(f"entry {_short(name)} holds {info.file_size // dtype.itemsize} "
                   f"{storage.type_name} elements, the pickle declares {storage.numel}")
    raw = _read(archive, name, size_on_disk, expected=info.file_size)
    array = np.frombuffer(raw, dtype.newbyteorder(">" if big_endian else "<"))
    if storage.type_name == "BFloat16Storage":  # numpy has no bfloat16: widen to float32 exactly
        return (array.astype(np.uint32) << 16).view(np.float32)
    if storage.type_name == "BoolStorage":
        return array != 0
    return array.astype(dtype, copy=False)


def _materialize(tensor, storage):
    """A fresh array of ``tensor``'s elements, read from its (1-D) ``storage`` array only after
    offset, size and stride are checked to stay inside it."""
    offset, size, stride = tensor.offset, tensor.size, tensor.stride
    if not _is_int(offset) or offset < 0:
        raise _Bad(f"storage offset {_short(offset)}, expected an integer >= 0")
    if (not isinstance(size, (tuple, list)) or len(size) > _MAX_DIMS
            or not all(_is_int(s) and s >= 0 for s in size)):
        raise _Bad(f"size {_short(size)}, expected at most {_MAX_DIMS} integers >= 0")
    if (not isinstance(stride, (tuple, list)) or len(stride) != len(size)
            or not all(_is_int(s) for s in stride)):
        raise _Bad(f"stride {_short(stride)}, expected {len(size)} integers")
    size, stride, available = tuple(size), tuple(stride), len(storage)
    if 0 in size:  # empty: any strides and offset, nothing is read
        try:
            return np.zeros(size, storage.dtype)
        except ValueError:
            raise _Bad(f"size {_short(size)} is too large") from None
    if max(size, default=1) > available or math.prod(size) > available:
        raise _Bad(f"size {_short(size)} holds more elements than its storage's {available}")
    for s, st in zip(size, stride):
        if s > 1 and st < 1:
            raise _Bad(f"stride {_short(stride)}: {st} along a dimension of size {s}, expected "
                       ">= 1")
    last = offset + sum((s - 1) * st for s, st in zip(size, stride) if s > 1)
    if last >= available:
        raise _Bad(f"offset {_short(offset)}, size {_short(size)} and stride {_short(stride)} "
                   f"reach element {_short(last)}, expected below its storage's {available}")
    # every element offset + sum(i_k * stride_k) now lies in [offset, last], inside the storage
    step, contiguous = 1, True
    for s, st in zip(reversed(size), reversed(stride)):
        contiguous = contiguous and (s == 1 or st == step)
        step *= s
    if contiguous:
        return storage[offset:offset + step].reshape(size).copy()
    strides = tuple(st * storage.itemsize if s > 1 else 0 for s, st in zip(size, stride))
    return np.lib.stride_tricks.as_strided(storage[offset:], size, strides).copy()


def _load(archive, size_on_disk):
    """``{name: array}`` from the opened archive; raises ``_Bad`` for anything malformed."""
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise _Bad(f"expected one data.pkl in the archive, found {len(pickles)}")
    prefix = pickles[0][:-len("/data.pkl")]
    big_endian = False
    if f"{prefix}/byteorder" in archive.namelist():
        order = _read(archive, f"{prefix}/byteorder", size_on_disk, limit=16)
        if order not in (b"little", b"big"):
            raise _Bad(f"byteorder record {_short(order)}, expected b'little' or b'big'")
        big_endian = order == b"big"
    data = _read(archive, pickles[0], size_on_disk, limit=_MAX_PICKLE_BYTES)
    _check_opcodes(data)
    try:
        state = _SafeUnpickler(data).load()
    except _Bad:
        raise
    except Exception as e:  # noqa: BLE001 - malformed pickle of any kind
        raise _Bad(f"cannot read the state dict: {type(e).__name__}: {_clip(e)}") from None
    if not isinstance(state, dict):
        raise _Bad(f"holds a {type(state).__name__}, expected a state dict")
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    tensors = [(k, v) for k, v in state.items() if isinstance(v, _Tensor)]
    uses = collections.Counter()
    for name, tensor in tensors:
        if not isinstance(name, str):
            raise _Bad(f"tensor name {_short(name)}, expected a string")
        if not isinstance(tensor.storage, _Storage):
            raise _Bad(f"tensor {_short(name)}: storage {_short(tensor.storage)}, expected a "
                       "storage record")
        uses[tensor.storage.key] += 1
    out, loaded = {}, {}
    for name, tensor in tensors:
        key = tensor.storage.key
        try:
            if key not in loaded:
                loaded[key] = _read_storage(archive, prefix, tensor.storage, big_endian,
                                            size_on_disk)
            out[name] = _materialize(tensor, loaded[key])
        except _Bad as e:
            raise _Bad(f"tensor {_short(name)}: {e}") from None
        uses[key] -= 1
        if not uses[key]:
            del loaded[key]  # keep at most the storages still to be used in memory
    return out


def load_torch_state_dict(path):
    """``{name: numpy array}`` from a zip-format ``torch.save`` file, executing no pickled code.

    Tensors are fresh arrays in native byte order (bfloat16 widened to float32); entries that are
    not tensors are dropped. A malformed or hostile file raises a one-line ``DataError``."""
    try:
        size_on_disk = os.path.getsize(path)
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise DataError(f"{path}: not a zip-format PyTorch file (files saved by PyTorch < 1.6 "
                        "are not supported; convert to model.safetensors)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {_clip(e)}") from None
    except Exception as e:  # noqa: BLE001 - a forged central directory
        raise DataError(f"{path}: not a readable zip file: {type(e).__name__}: "
                        f"{_clip(e)}") from None
    try:
        with archive:
            return _load(archive, size_on_disk)
    except _Bad as e:
        raise DataError(_one_line(f"{path}: {e}")) from None
