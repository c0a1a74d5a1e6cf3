"""Safe loading of model weights from ``.safetensors`` and pickled torch checkpoints.

A pickled checkpoint is first read with ``torch.load(weights_only=True)``. Lightning 1.4-era checkpoints (the
released StableSR files) also pickle bookkeeping objects, e.g. the ``callbacks`` dict is keyed by the class
``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint``; ``weights_only`` refuses those. For such files we
unpickle again with :class:`_PlaceholderUnpickler`, which

- resolves only torch's own allow-list of globals (tensor rebuild functions, storage types, dtypes, ``OrderedDict``,
  ``torch.Size`` ...), the same list ``weights_only`` uses;
- turns every other global into an inert :class:`PickledObjectPlaceholder` subclass. Pickle instantiates plain class
  instances with ``NEWOBJ`` (``cls.__new__``) and fills them with ``BUILD`` (``__setstate__``); both land in the
  placeholder's own methods, so no code of the unknown class runs;
- refuses any attempt to *call* an unknown global (the ``REDUCE``/``INST``/``OBJ`` opcodes, i.e. custom
  ``__reduce__``), because that is exactly how a pickle runs arbitrary functions such as ``os.system``.

``weights_only=False`` is never used. Only the tensors of the ``state_dict`` are returned.
"""

import io
import os
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from torch._weights_only_unpickler import _get_allowed_globals

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
ZIP_MAGIC = b"PK\x03\x04"      # torch.save's default format is a zip archive
PICKLE_PROTOCOL_OPCODE = 0x80   # the first byte of a pickle (protocol >= 2): torch.save's legacy format
SAFETENSORS_HEADER_BYTES = 8    # little-endian u64 header length


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read safely; the message names the file and the problem."""


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks to call a global that is not on torch's allow-list."""


class _RefuseCallMeta(type):
    """Metaclass of the placeholders: calling a placeholder (pickle ``REDUCE``) is refused.

    ``NEWOBJ`` calls ``cls.__new__`` directly and never goes through the metaclass ``__call__``, so plain pickled
    instances still load; only "call this global with these arguments" is stopped.
    """

    def __call__(cls, *args, **kwargs):
        raise UnsafePickleError(
            f"the pickle calls the global '{cls.pickled_global}' (not a tensor/container type on torch's allow-list), "
            "refusing to run it"
        )


class PickledObjectPlaceholder(metaclass=_RefuseCallMeta):
    """Inert stand-in for an instance of a class this loader does not import.

    ``new_args`` holds the ``NEWOBJ`` arguments and ``pickled_state`` the ``BUILD`` state; nothing else happens.
    """

    pickled_global = "<unknown>"

    def __new__(cls, *args):
        instance = object.__new__(cls)
        instance.__dict__["new_args"] = args
        return instance

    def __setstate__(self, state):
        self.__dict__["pickled_state"] = state

    def __repr__(self):
        return f"<placeholder for {self.pickled_global}>"


class _PlaceholderUnpickler(pickle.Unpickler):
    """Unpickler for torch's zip format that only builds allow-listed globals; see the module docstring."""

    _allowed_globals = _get_allowed_globals()

    def __init__(self, data_file, zip_reader, whole_file_storage):
        super().__init__(data_file)
        self._zip_reader = zip_reader
        self._whole_file_storage = whole_file_storage
        self._storages = {}
        self._placeholders = {}

    def find_class(self, module, name):
        qualified_name = f"{module}.{name}"
        if qualified_name in self._allowed_globals:
            return self._allowed_globals[qualified_name]
        if qualified_name not in self._placeholders:
            self._placeholders[qualified_name] = _RefuseCallMeta(
                name, (PickledObjectPlaceholder,), {"pickled_global": qualified_name, "__module__": __name__}
            )
        return self._placeholders[qualified_name]

    def persistent_load(self, saved_id):
        # torch.save writes ('storage', storage_type, key, location, numel) for every storage (serialization.py).
        typename, storage_type, key, _location, numel = saved_id
        if typename != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id type {typename!r}")
        dtype = torch.uint8 if storage_type is torch.UntypedStorage else storage_type.dtype
        if key not in self._storages:
            num_bytes = numel * torch._utils._element_size(dtype)
            offset = self._zip_reader.get_record_offset(f"data/{key}")
            self._storages[key] = torch.storage.TypedStorage(
                wrap_storage=self._whole_file_storage[offset : offset + num_bytes], dtype=dtype, _internal=True
            )
        return self._storages[key]


def _load_pickle_with_placeholders(path: Path):
    """Unpickle a torch zip checkpoint, memory-mapping the tensor data, with unknown classes as placeholders."""
    zip_reader = torch._C.PyTorchFileReader(str(path))
    if zip_reader.has_record("byteorder") and zip_reader.get_record("byteorder") != b"little":
        raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
    whole_file_storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=path.stat().st_size)
    unpickler = _PlaceholderUnpickler(io.BytesIO(zip_reader.get_record("data.pkl")), zip_reader, whole_file_storage)
    return unpickler.load()


def check_checkpoint_file(path: str | os.PathLike) -> Path:
    """Raise ``CheckpointError`` with the actual problem when ``path`` cannot be a checkpoint: missing, a folder,
    empty, a zip archive cut short (no central directory: an interrupted copy or save), or bytes that are neither a
    zip archive nor a pickle (``.safetensors``: shorter than its header). Reads only the first and last bytes."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint; the save or copy did not complete")
    with open(path, "rb") as handle:
        head = handle.read(len(ZIP_MAGIC))
    if path.suffix == ".safetensors":
        if size < SAFETENSORS_HEADER_BYTES:
            raise CheckpointError(f"{path}: {size} bytes, too short for a safetensors file (truncated?)")
        return path
    if head == ZIP_MAGIC:
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"{path}: truncated checkpoint ({size} bytes; its zip archive has no end record): the save or copy "
                "was cut short, use an earlier checkpoint or copy it again"
            )
        return path
    if head[0] != PICKLE_PROTOCOL_OPCODE:
        raise CheckpointError(f"{path}: not a torch checkpoint (neither a zip archive nor a pickle; {size} bytes)")
    return path


def _load_pickled_checkpoint(path: Path):
    check_checkpoint_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        pass  # weights_only refused a non-tensor global (e.g. a Lightning callback class): retry with placeholders
    except (RuntimeError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable torch zip checkpoint (truncated or corrupt?): {error}") from None
    try:
        return _load_pickle_with_placeholders(path)
    except UnsafePickleError as error:
        raise CheckpointError(f"{path}: {error}") from None
    except (RuntimeError, OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError) as error:
        raise CheckpointError(f"{path}: cannot unpickle checkpoint (truncated or corrupt?): {error}") from None


def _tensor_state_dict(path: Path, loaded) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint, or the loaded dict itself when it is a bare state dict."""
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{path}: expected a dict at the top level, found {type(loaded).__name__}")
    state_dict = loaded.get("state_dict", loaded)
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: 'state_dict' is a {type(state_dict).__name__}, expected a dict of tensors")
    non_tensors = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if non_tensors:
        more = " ..." if len(non_tensors) > 5 else ""
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {non_tensors[:5]}{more}")
    return dict(state_dict)


def load_checkpoint_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load the tensors of a checkpoint's ``state_dict`` without executing code from the file.

    ``.safetensors`` is read directly; ``.ckpt/.pt/.pth/.bin`` as described in the module docstring (tensors are
    memory-mapped, so a 6 GB file does not need 6 GB of RAM up front). A Lightning checkpoint yields its
    ``"state_dict"`` entry; a file holding a bare ``{name: tensor}`` dict yields that dict.
    """
    path = check_checkpoint_file(path)
    if path.suffix == ".safetensors":
        try:
            return load_safetensors(path, device="cpu")
        except SafetensorError as error:
            raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {error}") from None
    if path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: unknown checkpoint suffix {path.suffix!r}, expected .safetensors or one of {PICKLE_SUFFIXES}"
        )
    return _tensor_state_dict(path, _load_pickled_checkpoint(path))
