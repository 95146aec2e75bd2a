"""The pickle-free ``pytorch_model.bin`` reader against crafted and fuzzed hostile archives.

Archives are built here without PyTorch: a zip with ``<prefix>/data.pkl`` (a hand-assembled
protocol-2 pickle with the persistent-id structure ``torch.save`` writes), an optional
``<prefix>/byteorder`` and one raw buffer per storage under ``<prefix>/data/``."""
import os
import random
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from kplm.errors import DataError, KplmError
from kplm.pretrained.torch_zip import load_torch_state_dict

from conftest import ROOT

REFERENCE_BIN = os.path.join(ROOT, "tests", "reference", "tiny_bert_pytorch_model.bin")


# --- a tiny pickle assembler -------------------------------------------------------------------
class Raw(bytes):
    """Pickle opcodes inserted as they are."""


def enc(value):
    """Protocol-2 opcodes that push ``value`` (str, int, bool, None, tuple, dict, Raw)."""
    if isinstance(value, Raw):
        return bytes(value)
    if value is None:
        return b"N"
    if isinstance(value, bool):
        return b"\x88" if value else b"\x89"
    if isinstance(value, int):
        if 0 <= value < 256:
            return b"K" + bytes([value])
        if 0 <= value < 65536:
            return b"M" + struct.pack("<H", value)
        n = (value.bit_length() + 8) // 8
        return b"\x8a" + bytes([n]) + value.to_bytes(n, "little", signed=True)
    if isinstance(value, str):
        data = value.encode("utf-8")
        return b"X" + struct.pack("<I", len(data)) + data
    if isinstance(value, tuple):
        return b"(" + b"".join(enc(v) for v in value) + b"t"
    if isinstance(value, dict):
        return b"}(" + b"".join(enc(k) + enc(v) for k, v in value.items()) + b"u"
    raise TypeError(value)


def glob(module, name):
    return Raw(b"c" + f"{module}\n{name}\n".encode())


def ordered_dict(items=None):
    return Raw(glob("collections", "OrderedDict") + b")R"
               + (b"(" + b"".join(enc(k) + enc(v) for k, v in items.items()) + b"u"
                  if items else b""))


def storage(type_name, key, numel, location="cpu"):
    """The persistent id torch writes: ('storage', torch.<type>, key, location, numel)."""
    return Raw(enc(("storage", glob("torch", type_name), key, location, numel)) + b"Q")


def tensor(store, offset, size, stride, rebuild="_rebuild_tensor_v2"):
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
    args = (store, offset, tuple(size), tuple(stride))
    if rebuild == "_rebuild_tensor_v2":
        args += (False, ordered_dict())
    return Raw(glob("torch._utils", rebuild) + enc(args) + b"R")


def parameter(data):
    return Raw(glob("torch._utils", "_rebuild_parameter") + enc((data, True, ordered_dict()))
               + b"R")


def state_pickle(items, build=None):
    """A pickled OrderedDict of ``items`` (BUILD with ``build`` as torch's ``_metadata``)."""
    out = b"\x80\x02" + ordered_dict(items)
    if build is not None:
        out += enc(build) + b"b"
    return out + b"."


def write_archive(path, pickle_bytes, storages=(), byteorder=None, prefix="archive",
                  compression=zipfile.ZIP_STORED):
    """A torch-style zip at ``path``; ``storages``: {key: raw bytes}. Returns ``str(path)``."""
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        archive.writestr(f"{prefix}/data.pkl", pickle_bytes)
        if byteorder is not None:
            archive.writestr(f"{prefix}/byteorder", byteorder)
        for key, raw in dict(storages).items():
            archive.writestr(f"{prefix}/data/{key}", raw)
    return str(path)


def refused(path, *fragments):
    """Assert that loading ``path`` raises a one-line DataError naming the file and fragments."""
    with pytest.raises(KplmError) as caught:
        load_torch_state_dict(path)
    message = str(caught.value)
    assert isinstance(caught.value, DataError), message
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(f"{path}: "), message
    assert len(message) < 1000, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def one_float_tensor(tmp_path, offset, size, stride, numel=4, data=None, type_name="FloatStorage"):
    """An archive with one tensor 'w' over a storage '0' of ``numel`` float32 values 0, 1, ..."""
    data = np.arange(numel, dtype="<f4").tobytes() if data is None else data
    pkl = state_pickle({"w": tensor(storage(type_name, "0", numel), offset, size, stride)})
    return write_archive(tmp_path / "pytorch_model.bin", pkl, {"0": data})


# --- valid archives ----------------------------------------------------------------------------
def _bf16(values):
    """float32 values exactly representable in bfloat16 -> their uint16 bit patterns."""
    return (np.asarray(values, np.float32).view(np.uint32) >> 16).astype(np.uint16)


def _valid_state(order):
    """(pickle, storages, expected arrays) exercising every storage type and layout."""
    o = "<" if order == "little" else ">"
    six = np.arange(6, dtype=np.float32)
    bf = np.array([1.0, -2.5, 3.140625, 0.0], np.float32)
    storages = {
        "0": six.astype(o + "f4").tobytes(),
        "1": np.array([1, -2, 2**40], o + "i8").tobytes(),
        "2": np.array([0.5, -1.25], o + "f2").tobytes(),
        "3": _bf16(bf).astype(o + "u2").tobytes(),
        "4": np.array([1, 0, 1], np.uint8).tobytes(),
        "5": np.array([3, 255], np.uint8).tobytes(),
        "6": np.array([-1.5, 2**60], o + "f8").tobytes(),
        "7": np.array([-7, 2**31 - 1], o + "i4").tobytes(),
        "8": np.array([-3, 300], o + "i2").tobytes(),
        "9": np.array([-128, 127], np.int8).tobytes(),
        "e": b"",
    }
    s = {k: storage(t, k, n) for k, t, n in [
        ("0", "FloatStorage", 6), ("1", "LongStorage", 3), ("2", "HalfStorage", 2),
        ("3", "BFloat16Storage", 4), ("4", "BoolStorage", 3), ("5", "ByteStorage", 2),
        ("6", "DoubleStorage", 2), ("7", "IntStorage", 2), ("8", "ShortStorage", 2),
        ("9", "CharStorage", 2), ("e", "FloatStorage", 0)]}
    items = {
        "matrix": tensor(s["0"], 0, (2, 3), (3, 1)),
        "transposed": tensor(s["0"], 0, (3, 2), (1, 3)),
        "column_view": tensor(s["0"], 1, (2,), (3,)),
        "position_ids": tensor(s["0"], 2, (1, 4), (0, 1)),  # expand((1, -1)): size-1 stride 0
        "odd_size1_strides": tensor(s["0"], 1, (4, 1, 1), (1, -7, 2**62)),
        "odd_transposed": tensor(s["0"], 0, (3, 1, 2), (1, -5, 3)),
        "scalar": tensor(s["0"], 5, (), ()),
        "empty": tensor(s["e"], 99, (0, 5), (5, 1)),
        "empty_odd": tensor(s["0"], 0, (3, 0), (-1, 0)),
        "parameter": parameter(tensor(s["1"], 0, (3,), (1,))),
        "v1": tensor(s["2"], 0, (2,), (1,), rebuild="_rebuild_tensor"),
        "bf16": tensor(s["3"], 0, (2, 2), (2, 1)),
        "bool": tensor(s["4"], 0, (3,), (1,)),
        "byte": tensor(s["5"], 0, (2,), (1,)),
        "double": tensor(s["6"], 0, (2,), (1,)),
        "int": tensor(s["7"], 0, (2,), (1,)),
        "short": tensor(s["8"], 0, (2,), (1,)),
        "char": tensor(s["9"], 0, (2,), (1,)),
        "num_batches": 7,  # not a tensor: dropped
    }
    expected = {
        "matrix": six.reshape(2, 3), "transposed": six.reshape(2, 3).T,
        "column_view": np.array([1, 4], np.float32), "position_ids": six[None, 2:6],
        "odd_size1_strides": six[1:5].reshape(4, 1, 1),
        "odd_transposed": six.reshape(2, 3).T[:, None, :], "scalar": np.array(5, np.float32),
        "empty": np.zeros((0, 5), np.float32), "empty_odd": np.zeros((3, 0), np.float32),
        "parameter": np.array([1, -2, 2**40], np.int64),
        "v1": np.array([0.5, -1.25], np.float16), "bf16": bf.reshape(2, 2),
        "bool": np.array([True, False, True]), "byte": np.array([3, 255], np.uint8),
        "double": np.array([-1.5, 2**60]), "int": np.array([-7, 2**31 - 1], np.int32),
        "short": np.array([-3, 300], np.int16), "char": np.array([-128, 127], np.int8),
    }
    return state_pickle(items, build={"_metadata": {"": {"version": 1}}}), storages, expected


def _assert_state(state, expected):
    assert list(state) == list(expected)
    for name, want in expected.items():
        got = state[name]
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype, (name, got)
        assert got.dtype.isnative and got.flags.writeable and got.flags.owndata, name
        np.testing.assert_array_equal(got, want, err_msg=name, strict=True)


def test_round_trip_of_every_storage_type_and_layout(tmp_path):
    pkl, storages, expected = _valid_state("little")
    _assert_state(load_torch_state_dict(write_archive(tmp_path / "a.bin", pkl, storages,
                                                      byteorder="little")), expected)
    # no byteorder record (older archives): little-endian; deflated entries are read too
    _assert_state(load_torch_state_dict(write_archive(
        tmp_path / "b.bin", pkl, storages, compression=zipfile.ZIP_DEFLATED)), expected)


def test_big_endian_archive_is_byteswapped_to_native(tmp_path):
    pkl, storages, expected = _valid_state("big")
    _assert_state(load_torch_state_dict(write_archive(tmp_path / "big.bin", pkl, storages,
                                                      byteorder="big")), expected)


def test_nested_state_dict_and_the_reference_file(tmp_path):
    inner = {"w": tensor(storage("FloatStorage", "0", 2), 0, (2,), (1,))}
    pkl = b"\x80\x02" + enc({"state_dict": Raw(ordered_dict(inner)), "epoch": 3}) + b"."
    path = write_archive(tmp_path / "n.bin", pkl, {"0": np.array([1, 2], "<f4").tobytes()})
    _assert_state(load_torch_state_dict(path), {"w": np.array([1, 2], np.float32)})
    state = load_torch_state_dict(REFERENCE_BIN)  # written by torch.save
    assert state["embeddings.word_embeddings.weight"].shape == (179, 32)


# --- tensors that would read outside their storage ---------------------------------------------
def test_offset_and_size_beyond_the_storage_are_refused(tmp_path):
    # the reviewer's case: offset 2, size 64 over 4 floats returned 62 floats from outside
    refused(one_float_tensor(tmp_path, 2, (64,), (1,)), "tensor 'w'", "than its storage's 4")
    refused(one_float_tensor(tmp_path, 2, (3,), (1,)), "tensor 'w'", "reach element 4",
            "below its storage's 4")
    refused(one_float_tensor(tmp_path, 4, (1,), (1,)), "reach element 4")
    refused(one_float_tensor(tmp_path, 4, (), ()), "reach element 4")
    refused(one_float_tensor(tmp_path, 0, (2, 2), (3, 1)), "reach element 4")
    refused(one_float_tensor(tmp_path, 2**64, (1,), (1,)), "reach element")
    refused(one_float_tensor(tmp_path, -1, (1,), (1,)), "storage offset -1, expected an integer")
    refused(one_float_tensor(tmp_path, 0, (-1,), (1,)), "size (-1,), expected")
    refused(one_float_tensor(tmp_path, "0", (1,), (1,)), "storage offset '0'")
    refused(one_float_tensor(tmp_path, 0, (1, 1), (1,)), "stride (1,), expected 2 integers")
    refused(one_float_tensor(tmp_path, 0, (1,) * 40, (1,) * 40), "expected at most 32")
    # the last element exactly at the end is fine
    state = load_torch_state_dict(one_float_tensor(tmp_path, 1, (3,), (1,)))
    np.testing.assert_array_equal(state["w"], np.array([1, 2, 3], np.float32), strict=True)


def test_huge_sizes_are_refused_without_allocating(tmp_path):
    cases = [((2**62,), (1,)), ((2**40, 2**40), (1, 1)), ((2**64 + 1,), (1,)),
             ((2,) * 30, (1,) * 30),  # in-bounds overlapping strides, 2**30 elements
             ((0, 2**62, 2**62), (1, 1, 1))]  # empty, but no array can have that shape
    tracemalloc.start()
    try:
        for size, stride in cases:
            refused(one_float_tensor(tmp_path, 0, size, stride, numel=64), "tensor 'w'", "size")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20, peak
    refused(one_float_tensor(tmp_path, 0, (4,), (1,), numel=2**61, data=b"\0" * 16),
            "holds 4 FloatStorage elements, the pickle declares",
            "2305843009213693952")


def test_negative_and_zero_strides_are_refused(tmp_path):
    refused(one_float_tensor(tmp_path, 3, (4,), (-1,)), "-1 along a dimension of size 4",
            "expected >= 1")
    refused(one_float_tensor(tmp_path, 0, (2,), (-5,)), "-5 along a dimension of size 2")
    refused(one_float_tensor(tmp_path, 0, (2, 2), (2, 0)), "0 along a dimension of size 2")
    refused(one_float_tensor(tmp_path, 0, (3,), (0,)), "0 along a dimension of size 3")


# --- storages ----------------------------------------------------------------------------------
def test_unknown_or_wrong_storage_types_are_refused(tmp_path):
    path = str(tmp_path / "s.bin")
    for type_name in ("ComplexFloatStorage", "UntypedStorage", "QInt8Storage", "Tensor"):
        pkl = state_pickle({"w": tensor(storage(type_name, "0", 1), 0, (1,), (1,))})
        refused(write_archive(path, pkl, {"0": b"\0" * 16}), f"refusing to load torch.{type_name}")
    bad_records = {
        "has type 'FloatStorage', expected one of torch.":
            Raw(enc(("storage", "FloatStorage", "0", "cpu", 1)) + b"Q"),
        "expected a string key": Raw(enc(("storage", glob("torch", "FloatStorage"), 0, "cpu",
                                          1)) + b"Q"),
        "element count >= 0": storage("FloatStorage", "0", -1),
        "unexpected storage record": Raw(enc(("module", "x", "0", "cpu", 1)) + b"Q"),
    }
    for fragment, record in bad_records.items():
        refused(write_archive(path, state_pickle({"w": tensor(record, 0, (1,), (1,))}),
                              {"0": b"\0" * 4}), fragment)
    # one storage declared with two types
    pkl = state_pickle({"a": tensor(storage("FloatStorage", "0", 1), 0, (1,), (1,)),
                        "b": tensor(storage("IntStorage", "0", 1), 0, (1,), (1,))})
    refused(write_archive(path, pkl, {"0": b"\0" * 4}), "storage '0' is declared as 1 "
            "FloatStorage elements and as 1 IntStorage")
    # the tensor's storage argument is not a storage
    refused(write_archive(path, state_pickle({"w": tensor("0", 0, (1,), (1,))})),
            "tensor 'w': storage '0', expected a storage record")


def test_storage_files_of_the_wrong_length_are_refused(tmp_path):
    refused(one_float_tensor(tmp_path, 0, (1,), (1,), data=b"\0" * 7),
            "tensor 'w'", "archive/data/0", "holds 7 bytes, not a whole number of 4-byte")
    refused(one_float_tensor(tmp_path, 0, (1,), (1,), data=b"\0" * 8),
            "holds 2 FloatStorage elements, the pickle declares 4")
    refused(one_float_tensor(tmp_path, 0, (1,), (1,), data=b"\0" * 20),
            "holds 5 FloatStorage elements, the pickle declares 4")
    refused(one_float_tensor(tmp_path, 0, (1,), (1,), data=b"\0" * 3, type_name="HalfStorage"),
            "not a whole number of 2-byte HalfStorage")


def test_missing_storage_entry_is_refused(tmp_path):
    pkl = state_pickle({"w": tensor(storage("FloatStorage", "7", 1), 0, (1,), (1,))})
    refused(write_archive(tmp_path / "m.bin", pkl, {"0": b"\0" * 4}),
            "tensor 'w'", "no entry 'archive/data/7' for storage '7'")
    pkl = state_pickle({"w": tensor(storage("FloatStorage", "../" * 200, 1), 0, (1,), (1,))})
    message = refused(write_archive(tmp_path / "m.bin", pkl), "no entry")
    assert len(message) < 600  # the archive's key is cut


def test_byteorder_record_is_checked(tmp_path):
    path = tmp_path / "o.bin"
    data = np.arange(4, dtype="<f4").tobytes()
    pkl = state_pickle({"w": tensor(storage("FloatStorage", "0", 4), 0, (4,), (1,))})
    for order in ("middle", "LITTLE", "", "little\n", "big\0"):
        refused(write_archive(path, pkl, {"0": data}, byteorder=order), "byteorder record",
                "expected b'little' or b'big'")
    refused(write_archive(path, pkl, {"0": data}, byteorder="x" * 100), "expected at most 16")


# --- archives ----------------------------------------------------------------------------------
def _valid_archive(tmp_path, name="v.bin"):
    pkl, storages, _ = _valid_state("little")
    return write_archive(tmp_path / name, pkl, storages, byteorder="little")


def test_non_zip_and_truncated_archives_are_refused(tmp_path):
    for name, content in [("old.bin", b"\x80\x02not a zip"), ("empty.bin", b""),
                          ("noise.bin", bytes(range(256)) * 4)]:
        (tmp_path / name).write_bytes(content)
        refused(str(tmp_path / name), "not a zip-format PyTorch file")
    refused(str(tmp_path / "absent.bin"), "cannot read")
    refused(str(tmp_path), "cannot read")  # a directory
    full = open(_valid_archive(tmp_path), "rb").read()
    cut = tmp_path / "cut.bin"
    for length in list(range(0, len(full), 97)) + [len(full) - 1, len(full) - 22]:
        cut.write_bytes(full[:length])
        refused(str(cut))
    # an entry's bytes damaged: the CRC check refuses it
    path = one_float_tensor(tmp_path, 0, (4,), (1,))
    raw = bytearray(open(path, "rb").read())
    at = raw.find(np.arange(4, dtype="<f4").tobytes())
    raw[at + 5] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    refused(path, "tensor 'w'", "cannot read entry 'archive/data/0'", "BadZipFile")
    # no data.pkl, or two
    with zipfile.ZipFile(tmp_path / "two.bin", "w") as archive:
        archive.writestr("a/data.pkl", b"")
        archive.writestr("b/data.pkl", b"")
    refused(str(tmp_path / "two.bin"), "expected one data.pkl in the archive, found 2")


def _patch_central_sizes(path, name, compressed=None, uncompressed=None):
    """Forge the central directory's sizes of entry ``name``."""
    raw = bytearray(open(path, "rb").read())
    at = raw.find(b"PK\x01\x02")
    while raw[at + 46:at + 46 + len(name)] != name.encode():
        at = raw.find(b"PK\x01\x02", at + 4)
        assert at >= 0
    if compressed is not None:
        raw[at + 20:at + 24] = struct.pack("<I", compressed)
    if uncompressed is not None:
        raw[at + 24:at + 28] = struct.pack("<I", uncompressed)
    open(path, "wb").write(bytes(raw))


def test_forged_entry_sizes_and_zip_bombs_are_refused_without_reading(tmp_path):
    numel = (2**31 - 4) // 4
    pkl = state_pickle({"w": tensor(storage("FloatStorage", "0", numel), 0, (1,), (1,))})
    path = write_archive(tmp_path / "bomb.bin", pkl, {"0": b"\0" * 4096},
                         compression=zipfile.ZIP_DEFLATED)
    _patch_central_sizes(path, "archive/data/0", uncompressed=numel * 4)
    tracemalloc.start()
    try:
        refused(path, "tensor 'w'", f"declares {numel * 4} bytes in", "cannot hold")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20, peak
    # a stored entry claiming more bytes than the file holds
    path = one_float_tensor(tmp_path, 0, (1,), (1,), numel=2**28, data=b"\0" * 4)
    _patch_central_sizes(path, "archive/data/0", compressed=2**30, uncompressed=2**30)
    refused(path, "cannot hold (truncated or forged)")
    # a stored entry whose two sizes differ
    path = one_float_tensor(tmp_path, 0, (1,), (1,))
    _patch_central_sizes(path, "archive/data/0", compressed=4)
    refused(path, "declares 16 bytes in 4")
    # a data.pkl over the limit
    path = write_archive(tmp_path / "p.bin", b"\x80\x02." + b"\0" * 4096,
                         compression=zipfile.ZIP_DEFLATED)
    _patch_central_sizes(path, "archive/data.pkl", uncompressed=2**31)
    refused(path, "archive/data.pkl", "expected at most 1073741824")


# --- the pickle --------------------------------------------------------------------------------
def test_disallowed_globals_are_refused_without_being_called(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = enc(("touch EXPLOITED",)) + b"R"
    for module, name in [("posix", "system"), ("os", "system"), ("builtins", "eval"),
                         ("torch", "load"), ("torch._utils", "_rebuild_qtensor"),
                         ("numpy", "frombuffer")]:
        pkl = b"\x80\x02" + glob(module, name) + calls + b"."
        refused(write_archive(tmp_path / "x.bin", pkl), f"refusing to load {module}.{name}")
    # STACK_GLOBAL (protocol 4) goes through the same gate
    pkl = b"\x80\x04" + enc("os") + enc("system") + b"\x93" + calls + b"."
    refused(write_archive(tmp_path / "x.bin", pkl), "refusing to load os.system")
    assert not (tmp_path / "EXPLOITED").exists()
    # a long module name is cut in the message
    message = refused(write_archive(tmp_path / "x.bin", b"\x80\x02" + glob("m" * 5000, "f")
                                    + b")R."), "refusing to load mmm")
    assert len(message) < 600


def test_disallowed_opcodes_and_forged_memo_are_refused(tmp_path):
    path = tmp_path / "op.bin"
    od = bytes(glob("collections", "OrderedDict"))
    for opcode, pkl in [("NEWOBJ", od + b")\x81."), ("OBJ", b"(" + od + b"o."),
                        ("INST", b"(icollections\nOrderedDict\n."), ("EXT1", b"\x82\x01."),
                        ("PERSID", b"P0\n.")]:
        refused(write_archive(path, b"\x80\x02" + pkl), f"opcode {opcode}")
    refused(write_archive(path, b"\x80\x02}r\xf0\xff\xff\xff."),
            "stores memo entry 4294967280 at byte 3, expected at most 0")
    refused(write_archive(path, b"\x80\x02}X\xff\xff\xff\x7fab."), "malformed pickle")
    refused(write_archive(path, b"\x80\x02}"), "malformed pickle")
    refused(write_archive(path, b"\x80\x02h\x05."), "cannot read the state dict")
    # BUILD may set an OrderedDict's attributes (torch's _metadata), never a record's state
    t = tensor(storage("FloatStorage", "0", 1), 0, (1,), (1,))
    pkl = state_pickle({"w": Raw(bytes(t) + enc((1, 2)) + b"b")})
    refused(write_archive(path, pkl, {"0": b"\0" * 4}), "sets the state of a tensor")


def test_malformed_state_dicts_are_refused(tmp_path):
    path = tmp_path / "sd.bin"
    t = tensor(storage("FloatStorage", "0", 1), 0, (1,), (1,))
    refused(write_archive(path, b"\x80\x02" + enc((1, 2)) + b"."), "holds a tuple, expected")
    refused(write_archive(path, state_pickle({7: t}), {"0": b"\0" * 4}),
            "tensor name 7, expected a string")
    short = Raw(glob("torch._utils", "_rebuild_tensor_v2") + enc(("x",)) + b"R")
    refused(write_archive(path, state_pickle({"w": short})), "a tensor record has 1 fields")
    refused(write_archive(path, state_pickle({"w": Raw(glob("collections", "OrderedDict")
                                                       + enc((1, 2, 3)) + b"R")})),
            "cannot read the state dict: TypeError")
    refused(write_archive(path, state_pickle({"w\nx": tensor("0", 0, (1,), (1,))})),
            "tensor 'w\\nx'")


def test_deep_nesting_neither_recurses_nor_fails(tmp_path):
    deep = Raw(b")" + b"\x85" * 200_000)  # a tuple nested 200000 deep
    t = tensor(storage("FloatStorage", "0", 1), 0, (1,), (1,))
    path = write_archive(tmp_path / "d.bin", state_pickle({"deep": deep, "w": t}),
                         {"0": np.array([2], "<f4").tobytes()})
    _assert_state(load_torch_state_dict(path), {"w": np.array([2], np.float32)})
    pid = Raw(enc(("storage", glob("torch", "FloatStorage"), deep, "cpu", 1)) + b"Q")
    message = refused(write_archive(tmp_path / "d.bin", state_pickle(
        {"w": tensor(pid, 0, (1,), (1,))})), "expected a string key")
    assert len(message) < 1000
    # a dict that holds itself
    loop = b"\x80\x02}q\x00(X\x01\x00\x00\x00ah\x00u."
    assert load_torch_state_dict(write_archive(tmp_path / "d.bin", loop)) == {}


# --- fuzzing -----------------------------------------------------------------------------------
def _expected_or_none(store, offset, size, stride):
    """The tensor by explicit index arithmetic, or None where an index leaves the storage."""
    values = []
    for index in np.ndindex(*size):
        at = offset + sum(i * s for i, s in zip(index, stride))
        if not 0 <= at < len(store):
            return None
        values.append(store[at])
    return np.array(values, np.float32).reshape(size)


def test_fuzzed_offsets_sizes_and_strides_never_read_outside(tmp_path):
    rng = random.Random(0)
    store = np.arange(16, dtype=np.float32) * 3 + 1
    offsets = [-1, 0, 1, 3, 15, 16, 17, 2**31, 2**63]
    sizes = [0, 1, 1, 2, 3, 4, 5, 16, 17, 2**31]
    strides = [-2, -1, 0, 1, 1, 2, 3, 5, 16, 2**40]
    path = tmp_path / "f.bin"
    accepted = 0
    for _ in range(400):
        ndim = rng.randint(0, 3)
        size = tuple(rng.choice(sizes) for _ in range(ndim))
        stride = tuple(rng.choice(strides) for _ in range(ndim))
        offset = rng.choice(offsets)
        pkl = state_pickle({"w": tensor(storage("FloatStorage", "0", 16), offset, size, stride)})
        write_archive(path, pkl, {"0": store.astype("<f4").tobytes()})
        try:
            got = load_torch_state_dict(str(path))["w"]
        except DataError as e:
            assert "\n" not in str(e) and str(e).startswith(f"{path}: tensor 'w': ")
            continue
        accepted += 1
        want = (np.zeros(size, np.float32) if 0 in size
                else _expected_or_none(store, offset, size, stride))
        assert want is not None, (offset, size, stride)  # accepted => every index is inside
        np.testing.assert_array_equal(got, want, strict=True)
    assert accepted > 40


def test_fuzzed_bytes_only_ever_raise_data_error(tmp_path):
    rng = random.Random(1)
    pkl, storages, _ = _valid_state("little")
    archive = open(_valid_archive(tmp_path), "rb").read()
    path = tmp_path / "fz.bin"
    for round_ in range(600):
        if round_ % 2:  # damage the pickle, keep the zip sound
            data = bytearray(pkl)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            write_archive(path, bytes(data), storages, byteorder="little")
        else:  # damage the archive itself
            data = bytearray(archive)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            path.write_bytes(bytes(data))
        try:
            state = load_torch_state_dict(str(path))
        except DataError as e:
            assert "\n" not in str(e) and str(e).startswith(f"{path}: "), str(e)
            continue
        assert all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items())
