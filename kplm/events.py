"""A run's TensorBoard scalars, read without TensorFlow.

``kplm runs`` and ``kplm report`` answer in a fraction of a second: importing TensorFlow (which
TensorBoard's own event loader does) would take seconds. An event file is a TFRecord file
(``uint64`` length, ``uint32`` masked CRC-32C of the length, the record, its CRC) of
``Event`` protocol buffers; TensorBoard ships the message classes (``tensorboard.compat.proto``,
plain protobuf). A ``tf.summary.scalar`` is a one-element float tensor.

A file cut short (a run killed while writing) ends where its last whole record ends; a record
whose CRC does not match ends the file there too. A resumed run writes a new file and repeats
the steps after its checkpoint: for each tag and step the value written last counts.

Example:
>>> import os, tempfile
>>> from kplm.events import scalars
>>> scalars(tempfile.mkdtemp())     # a run directory without tensorboard/ has no scalars
{}
"""
import glob
import os
import struct

_FLOAT_TYPES = {1: "<f4", 2: "<f8", 19: "<f2", 3: "<i4", 9: "<i8"}  # DataType -> numpy dtype


def records(path):
    """The records of the TFRecord file ``path``, up to its last whole, intact one."""
    # TensorBoard's TensorFlow-free stand-in for TF's CRC (pure Python, no TensorFlow import)
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
    with open(path, "rb") as f:
        data = f.read()
    position = 0
    while position + 12 <= len(data):
        header = data[position:position + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[position + 8:position + 12])
        end = position + 12 + length + 4
        if header_crc != masked_crc32c(header) or end > len(data):
            return
        record = data[position + 12:position + 12 + length]
        if len(record) < 4096:  # scalars are small: check them; a large record (a graph) is
            (crc,) = struct.unpack("<I", data[end - 4:end])  # skipped unchecked below
            if crc != masked_crc32c(record):
                return
        yield record
        position = end


def _value(value):
    """The float in a scalar summary value, or None for anything else (text, images)."""
    import numpy as np
    if value.HasField("tensor"):
        tensor = value.tensor
        dtype = _FLOAT_TYPES.get(tensor.dtype)
        if dtype is None or any(d.size != 1 for d in tensor.tensor_shape.dim):
            return None
        if tensor.tensor_content:
            array = np.frombuffer(tensor.tensor_content, dtype=dtype)
        else:
            array = np.asarray(list(tensor.float_val) or list(tensor.double_val)
                               or list(tensor.int_val) or list(tensor.int64_val))
        return float(array.reshape(-1)[0]) if array.size == 1 else None
    if value.HasField("simple_value"):
        return float(value.simple_value)
    return None


def scalars(run_dir):
    """``{tag: [(step, wall_time, value), ...]}`` (sorted by step) of every scalar under
    ``run_dir/tensorboard``: ``train/loss``, ``train/learning_rate``,
    ``train/tokens_per_second``, ``validation/<metric>``, ..."""
    from tensorboard.compat.proto import event_pb2
    found = {}
    files = sorted(glob.glob(os.path.join(glob.escape(run_dir), "tensorboard", "**",
                                          "events.out.tfevents.*"), recursive=True))
    for path in files:
        try:
            raw = list(records(path))
        except OSError:
            continue
        for record in raw:
            try:
                event = event_pb2.Event.FromString(record)
            except Exception:  # not an Event: a foreign file in the folder
                continue
            for value in event.summary.value:
                number = _value(value)
                if number is not None:
                    found.setdefault(value.tag, {})[event.step] = (event.wall_time, number)
    return {tag: [(step, wall, v) for step, (wall, v) in sorted(points.items())]
            for tag, points in sorted(found.items())}
