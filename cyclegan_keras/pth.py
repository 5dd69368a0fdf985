"""A safe reader of PyTorch `.pth` files (state dicts and TorchScript parameters), without PyTorch.

A `.pth` is a pickle, and unpickling can run code: the unpickler here resolves only the globals a state
dict needs and refuses the rest before anything runs. Reads the zip format (PyTorch >= 1.6) and the
legacy one of the 2017-2019 published files; a cut or damaged file raises `CorruptCheckpointError`.
"""

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16,  # no numpy bfloat16: widened to float32 on load
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# How every legacy file starts: the magic number, pickled with protocol 2.
_LEGACY_HEADER = pickle.dumps(_LEGACY_MAGIC, protocol=2)
_ZIP_MAGIC = b"PK\x03\x04"


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks to run or build something a state dict never needs."""


class ConversionError(ValueError):
    """The state dict is not a generator this converter knows; says what it found."""


class CorruptCheckpointError(ValueError):
    """The file is damaged (cut short or bytes changed): the message says where."""


class _Damaged(Exception):
    """Damage found where the path is not known; `read_state_dict` adds it."""


def _corrupt(path, detail):
    return CorruptCheckpointError(f"{path} is truncated or corrupt: {detail}; download it again")


class _Storage:
    def __init__(self, key, dtype_name, numel):
        self.key = key
        self.dtype_name = dtype_name
        self.numel = numel
        self.array = None

    @property
    def nbytes(self):
        return self.numel * np.dtype(_STORAGE_DTYPES[self.dtype_name]).itemsize

    def load(self, raw, byteorder="little"):
        dtype = np.dtype(_STORAGE_DTYPES[self.dtype_name]).newbyteorder("<" if byteorder == "little" else ">")
        array = np.frombuffer(raw, dtype).astype(dtype.newbyteorder("="))
        if self.dtype_name == "BFloat16Storage":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        self.array = array


class _TensorRef:
    """A tensor waiting for its storage's bytes (the legacy format stores them last)."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def to_numpy(self, name):
        """The tensor's values, after checking its view lies inside its storage."""
        storage, offset, size, stride = self.storage, self.offset, self.size, self.stride
        if not (
            isinstance(storage, _Storage)
            and storage.array is not None
            and _is_int(offset)
            and isinstance(size, tuple)
            and isinstance(stride, tuple)
            and len(size) == len(stride)
            and all(_is_int(v) for v in size + stride)
        ):
            raise _Damaged(f"tensor {name} is not a well-formed tensor record")
        if offset < 0 or any(v < 0 for v in size + stride):
            raise _Damaged(f"tensor {name} has a negative offset, size or stride: {offset}, {size}, {stride}")
        numel = len(storage.array)
        if all(size):  # an empty tensor reads nothing
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if last >= numel:
                raise _Damaged(
                    f"tensor {name} (offset {offset}, size {size}, stride {stride}) reaches element {last} "
                    f"of a storage of {numel}"
                )
        itemsize = storage.array.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            storage.array[offset:], shape=size, strides=[s * itemsize for s in stride], writeable=False
        )
        return np.array(view)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
    return data


class _ScriptObject:
    """A TorchScript module's attributes, held as data: no method of the module exists here."""

    type_name = "?"

    def __setstate__(self, state):
        self.attributes = state if isinstance(state, dict) else {}


_SCRIPT_CLASSES = {}


def _script_class(module, name):
    """One inert `_ScriptObject` subclass per TorchScript class name (for error messages)."""
    key = f"{module}.{name}"
    if key not in _SCRIPT_CLASSES:
        _SCRIPT_CLASSES[key] = type("ScriptObject", (_ScriptObject,), {"type_name": key})
    return _SCRIPT_CLASSES[key]


class _RestrictedUnpickler(pickle.Unpickler):
    ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    # TorchScript archives pickle their modules' attributes; lists (conv strides, paddings) come through these.
    SCRIPT_ALLOWED = {
        ("torch.jit._pickle", "build_intlist"): list,
        ("torch.jit._pickle", "build_doublelist"): list,
        ("torch.jit._pickle", "build_boollist"): list,
    }

    def __init__(self, file, storages, path, torchscript=False):
        super().__init__(file)
        self.storages = storages
        self.path = path
        self.torchscript = torchscript

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return name  # persistent_load receives the storage type by name
        if self.torchscript and (module, name) in self.SCRIPT_ALLOWED:
            return self.SCRIPT_ALLOWED[(module, name)]
        if self.torchscript and (module == "__torch__" or module.startswith("__torch__.")):
            return _script_class(module, name)
        raise UnsafePickleError(
            f"{self.path}: refusing to load {module}.{name}: a PyTorch state dict needs only tensors, "
            "and this file asks for more (it may run code, or be corrupt). Nothing was executed."
        )

    def persistent_load(self, saved_id):
        # Only storages are persistent records; anything else is damage (nothing is looked up, so no code runs).
        if not (isinstance(saved_id, tuple) and len(saved_id) >= 5 and saved_id[0] == "storage"):
            raise _Damaged(f"unexpected persistent id {str(saved_id)[:60]!r} in the pickle")
        storage_type, key, _location, numel = saved_id[1:5]
        if storage_type not in _STORAGE_DTYPES or not _is_int(numel) or numel < 0:
            raise _Damaged(f"storage {str(key)[:20]!r} has type {storage_type!r} and {numel!r} elements")
        if key not in self.storages:
            self.storages[key] = _Storage(key, storage_type, numel)
        storage = self.storages[key]
        if (storage.dtype_name, storage.numel) != (storage_type, numel):
            raise _Damaged(f"storage {key!r} is declared twice, differently")
        return storage


def read_state_dict(path, torchscript=False):
    """Reads a PyTorch `.pth` state dict into `{key: numpy array}`, safely.

    Byte counts, tensor views and (zip format) CRC-32s are checked; the legacy format has no checksum,
    so changed tensor bytes there cannot be found by any reader.

    Args:
        torchscript: also accept a TorchScript archive: its parameters by dotted module path, its code unread.

    Raises:
        CorruptCheckpointError: the file is truncated or damaged.
        UnsafePickleError: the pickle names anything but tensors and dicts.
        ConversionError: the file is not a PyTorch state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PyTorch file not found: {path}")
    return parse_state_dict(path.read_bytes(), path, torchscript)


def parse_state_dict(content, path="<bytes>", torchscript=False):
    """`read_state_dict` of a file's bytes already in memory; `path` names it in messages."""
    storages = {}
    try:
        if not content:
            raise _Damaged("the file is empty")
        if content.startswith(_ZIP_MAGIC) or _looks_like_zip(content):
            state = _read_zip(content, storages, path, torchscript)
        elif len(content) < len(_ZIP_MAGIC) and _ZIP_MAGIC.startswith(content):
            raise _Damaged(f"it ends after {len(content)} byte(s)")
        elif _near_legacy_header(content):
            state = _read_legacy(io.BytesIO(content), storages, path)
        else:
            _refuse_unknown(content, path)
        return _to_numpy(state, path)
    except _Damaged as damage:
        raise _corrupt(path, damage) from None


def _looks_like_zip(content):
    try:
        return zipfile.is_zipfile(io.BytesIO(content))
    except Exception:  # is_zipfile itself can trip over damaged records
        return False


def _near_legacy_header(content):
    """The legacy header, or a cut or a changed byte or two of it."""
    head = content[: len(_LEGACY_HEADER)]
    if len(head) < len(_LEGACY_HEADER):
        if _LEGACY_HEADER.startswith(head):
            raise _Damaged(f"it ends after {len(head)} byte(s), inside the PyTorch header")
        return False
    changed = sum(a != b for a, b in zip(head, _LEGACY_HEADER))
    if 0 < changed <= 2:
        raise _Damaged(f"{changed} byte(s) of the PyTorch header are changed")
    return changed == 0


def _refuse_unknown(content, path):
    """Not a PyTorch file: a malicious pickle is refused, anything else named."""
    try:
        _RestrictedUnpickler(io.BytesIO(content), {}, path).load()
    except UnsafePickleError:
        raise
    except Exception as error:
        raise ConversionError(f"{path} is neither a zip nor a legacy PyTorch file: {error}") from None
    raise ConversionError(f"{path} is not a PyTorch file (no PyTorch header)")


def _unpickle(file, storages, path, what, torchscript=False):
    """One pickle from `file`; any failure but a refusal is damage."""
    try:
        return _RestrictedUnpickler(file, storages, path, torchscript).load()
    except (UnsafePickleError, _Damaged):
        raise
    except Exception as error:  # truncated, invalid opcodes, wrong types
        raise _Damaged(f"its {what} cannot be read ({type(error).__name__}: {str(error)[:80]})") from None


def _read_zip(content, storages, path, torchscript=False):
    """PyTorch's format since 1.6: a zip of ARCHIVE/data.pkl and one ARCHIVE/data/KEY per storage."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
    except Exception as error:
        raise _Damaged(f"the zip directory at its end is missing or damaged ({error})") from None
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            if any("/data/" in n or n.endswith("/version") for n in names):
                raise _Damaged("the archive holds PyTorch records but no data.pkl")
            raise ConversionError(f"{path} is a zip file without data.pkl: not a PyTorch file")
        prefix = pickles[0][: -len("data.pkl")]
        state = _unpickle(io.BytesIO(_zip_record(archive, pickles[0])), storages, path, "data.pkl", torchscript)
        byteorder = "little"
        if f"{prefix}byteorder" in names:
            byteorder = _zip_record(archive, f"{prefix}byteorder").decode("ascii", "replace")
            if byteorder not in ("little", "big"):
                raise _Damaged(f"its byteorder record says {byteorder[:20]!r}")
        tensor_names = _tensor_names(state)
        for key, storage in storages.items():
            raw = _zip_record(archive, f"{prefix}data/{key}")
            _check_size(storage, len(raw), tensor_names.get(key, key))
            storage.load(raw, byteorder)
    return state


def _zip_record(archive, name):
    try:
        return archive.read(name)
    except KeyError:
        raise _Damaged(f"record {name} is missing from the archive") from None
    except Exception as error:  # bad CRC, bad header, unknown compression, cut short
        raise _Damaged(f"record {name} cannot be read ({error})") from None


def _check_size(storage, found, name):
    if found != storage.nbytes:
        raise _Damaged(f"expected {storage.nbytes} bytes for tensor {name}, found {found}")


def _tensor_names(state):
    """`{storage key: the name of a tensor viewing it}`, for messages a user can place."""
    names = {}
    state = _unwrap(state)
    if isinstance(state, dict):
        for name, value in state.items():
            if isinstance(value, _TensorRef) and isinstance(value.storage, _Storage):
                names.setdefault(value.storage.key, name)
    return names


def _read_legacy(file, storages, path):
    """PyTorch's format before 1.6: magic, protocol, sys info, pickle, keys, then per storage an int64 count, bytes."""
    _unpickle(file, storages, path, "header")  # the magic, checked by the caller
    _unpickle(file, storages, path, "protocol version")
    _unpickle(file, storages, path, "system info")
    state = _unpickle(file, storages, path, "state dict pickle")
    keys = _unpickle(file, storages, path, "list of storages")
    if not (
        isinstance(keys, list)
        and all(isinstance(key, (str, int)) for key in keys)
        and len(set(keys)) == len(keys)
        and set(keys) == set(storages)
    ):
        raise _Damaged(f"its list of storages ({str(keys)[:60]}) does not match the pickle's {len(storages)}")
    tensor_names = _tensor_names(state)
    for key in keys:
        storage = storages[key]
        name = tensor_names.get(key, key)
        header = file.read(8)
        if len(header) < 8:
            raise _Damaged(
                f"expected 8 + {storage.nbytes} bytes for tensor {name} (its element count, its data), "
                f"found {len(header)}"
            )
        (numel,) = struct.unpack("<q", header)
        if numel != storage.numel:
            raise _Damaged(f"tensor {name} is declared with {storage.numel} elements, its data with {numel}")
        raw = file.read(storage.nbytes)
        _check_size(storage, len(raw), name)
        storage.load(raw)
    return state


def _unwrap(state):
    if isinstance(state, _ScriptObject):
        tensors = collections.OrderedDict()
        _script_tensors(state, "", tensors, set())
        return tensors
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        return state["state_dict"]
    return state


def _script_tensors(node, prefix, result, seen):
    """Tensors of a TorchScript module tree, keyed by dotted attribute path."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, _TensorRef):
        result[prefix] = node
    elif isinstance(node, _ScriptObject):
        for name, value in getattr(node, "attributes", {}).items():
            _script_tensors(value, f"{prefix}.{name}" if prefix else str(name), result, seen)


def _to_numpy(state, path):
    state = _unwrap(state)
    if not isinstance(state, dict):
        raise ConversionError(f"{path} holds a {type(state).__name__}, not a state dict")
    result = collections.OrderedDict()
    for key, value in state.items():
        if isinstance(value, _TensorRef):
            result[str(key).removeprefix("module.")] = value.to_numpy(key)
    if not result:
        raise ConversionError(f"{path} holds no tensors")
    return result
