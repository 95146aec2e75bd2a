"""Read PyTorch ``pytorch_model.bin`` state dicts without PyTorch and without running pickled code.

A ``.bin`` written by ``torch.save`` (PyTorch >= 1.6) is a zip holding ``data.pkl`` (a pickle
describing the tensors) and one raw buffer per storage. The pickle is read by an unpickler that
resolves only the handful of names a state dict uses (tensor rebuilders, storage types,
``OrderedDict``) to kplm's own stand-ins; any other global (``os.system``, ``eval``, ...) is
refused before anything runs. This is the same policy as ``torch.load(weights_only=True)``.

Example:
    state = load_torch_state_dict("bert/pytorch_model.bin")   # {name: numpy array}
"""
import collections
import io
import pickle
import zipfile

import numpy as np

from kplm.errors import DataError

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name):
        self.name = name


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    """An ndarray view of ``storage`` with torch's size and stride (in elements)."""
    itemsize = storage.dtype.itemsize
    if not size:
        return storage[offset].copy()
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)).copy()


def _rebuild_parameter(data, *_ignored):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, data, archive, prefix, source):
        super().__init__(io.BytesIO(data))
        self._archive, self._prefix, self._source = archive, prefix, source

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise DataError(f"{self._source}: refusing to load {module}.{name}: only tensors and "
                        "dicts of tensors are read from PyTorch files (convert it to "
                        "model.safetensors to be sure)")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid[:5]
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise DataError(f"{self._source}: unexpected storage record {pid!r}")
        raw = self._archive.read(f"{self._prefix}/data/{key}")
        dtype = _STORAGE_DTYPES[storage_type.name]
        if dtype == "bfloat16":  # numpy has no bfloat16: widen to float32 exactly
            halves = np.frombuffer(raw, dtype=np.uint16, count=numel)
            return (halves.astype(np.uint32) << 16).view(np.float32)
        return np.frombuffer(raw, dtype=dtype, count=numel)


def load_torch_state_dict(path):
    """``{name: numpy array}`` from a zip-format ``torch.save`` file, executing no pickled code."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise DataError(f"{path}: not a zip-format PyTorch file (files saved by PyTorch < 1.6 "
                        "are not supported; convert to model.safetensors)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise DataError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0][:-len("/data.pkl")]
        try:
            state = _SafeUnpickler(archive.read(pickles[0]), archive, prefix, path).load()
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{path}: cannot read the state dict: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict):
        raise DataError(f"{path}: holds a {type(state).__name__}, expected a state dict")
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
