"""Free an ONNX model's batch dimension, so onnxruntime takes several images in one run.

rembg's u2net-family files declare their input and outputs as [1, 3, 320, 320] and
[1, 1, 320, 320]; onnxruntime refuses a batch of 2 against that. Inside, the graph
takes its sizes from Shape ops, so only the declarations need to change: the first
dimension of each graph input and output that is fixed at 1 becomes the symbol "N".

This edits the protobuf wire format directly (the `onnx` package is not a
dependency): ModelProto.graph(7) -> GraphProto.input(11)/output(12) ->
ValueInfoProto.type(2) -> TypeProto.tensor_type(1) -> shape(2) -> dim(1) ->
dim_value(1) | dim_param(2). Graph inputs that are initializers (GraphProto
field 5, older exports list them as inputs too) are left alone.
"""

from __future__ import annotations

from collections.abc import Iterator


class ModelFormatError(ValueError):
    """The bytes are not a model this can patch."""


def free_batch_dimension(model: bytes, symbol: str = "N") -> bytes:
    """The model with the leading 1 of each graph input and output made `symbol`."""
    out, patched = bytearray(), 0
    for number, wire, value, raw in _fields(model):
        if number == 7 and wire == 2:
            graph, patched = _patch_graph(value, symbol)
            out += _tag(7, 2) + _varint(len(graph)) + graph
        else:
            out += raw
    if not patched:
        raise ModelFormatError("no graph input or output with a batch dimension of 1")
    return bytes(out)


def _patch_graph(graph: bytes, symbol: str) -> tuple[bytes, int]:
    initializers = {_string_field(value, 8) for number, wire, value, _ in _fields(graph)
                    if number == 5 and wire == 2}
    out, patched = bytearray(), 0
    for number, wire, value, raw in _fields(graph):
        if number in (11, 12) and wire == 2 and _string_field(value, 1) not in initializers:
            new = _patch_path(value, (2, 1, 2), symbol)
            if new is not None:
                out += _tag(number, 2) + _varint(len(new)) + new
                patched += 1
                continue
        out += raw
    return bytes(out), patched


def _patch_path(message: bytes, path: tuple[int, ...], symbol: str) -> bytes | None:
    """Follow `path` (one LEN field number per level) to a TensorShapeProto and patch its
    first dim; None when there is nothing to patch."""
    out, done = bytearray(), False
    for number, wire, value, raw in _fields(message):
        if not done and wire == 2 and number == path[0]:
            new = _patch_path(value, path[1:], symbol) if len(path) > 1 else _patch_shape(value, symbol)
            if new is not None:
                out += _tag(number, 2) + _varint(len(new)) + new
                done = True
                continue
        out += raw
    return bytes(out) if done else None


def _patch_shape(shape: bytes, symbol: str) -> bytes | None:
    out, first = bytearray(), True
    for number, wire, value, raw in _fields(shape):
        if number == 1 and wire == 2 and first:
            first = False
            dim = {n: v for n, w, v, _ in _fields(value)}
            if dim.get(1) != 1:
                return None
            new = _tag(2, 2) + _varint(len(symbol.encode())) + symbol.encode()
            out += _tag(1, 2) + _varint(len(new)) + new
            continue
        out += raw
    return None if first else bytes(out)


def _string_field(message: bytes, field: int) -> str | None:
    for number, wire, value, _ in _fields(message):
        if number == field and wire == 2:
            return bytes(value).decode("utf-8", "replace")
    return None


def _fields(buf: bytes) -> Iterator[tuple[int, int, object, bytes]]:
    """(field number, wire type, value, the raw bytes of the whole field) for each field."""
    view = memoryview(buf)
    i, n = 0, len(buf)
    while i < n:
        start = i
        key, i = _read_varint(view, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(view, i)
        elif wire == 1:
            value, i = view[i:i + 8], i + 8
        elif wire == 2:
            length, i = _read_varint(view, i)
            value, i = view[i:i + length], i + length
        elif wire == 5:
            value, i = view[i:i + 4], i + 4
        else:
            raise ModelFormatError(f"unsupported protobuf wire type {wire}")
        if i > n:
            raise ModelFormatError("truncated protobuf message")
        yield number, wire, value, bytes(view[start:i])


def _read_varint(view: memoryview, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(view):
            raise ModelFormatError("truncated varint")
        b = view[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ModelFormatError("varint too long")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _tag(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)
