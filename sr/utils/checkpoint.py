"""Safe loading of model weights from ``.safetensors`` and pickled torch checkpoints.

A pickled checkpoint is read with ``torch.load(weights_only=True)`` only; ``weights_only=False`` is never used.
Lightning 1.4-era checkpoints (the released StableSR files) also pickle one bookkeeping class: their ``callbacks``
dict is keyed by ``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint``, which ``weights_only`` refuses.
That name, and only that name, is allowed for the duration of the load (``torch.serialization.safe_globals``, so
nothing changes for other ``torch.load`` calls) and resolves to the inert :class:`LightningCallbackStandIn`:
Lightning is not imported and no code of it runs. Any other non-tensor global, in particular a pickled call such as
``os.system``, is refused by torch's unpickler before it runs, and the error names the file and the globals.
Only the tensors of the ``state_dict`` are returned.
"""

import os
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
ZIP_MAGIC = b"PK\x03\x04"      # torch.save's default format is a zip archive
PICKLE_PROTOCOL_OPCODE = 0x80   # the first byte of a pickle (protocol >= 2): torch.save's legacy format
SAFETENSORS_HEADER_BYTES = 8    # little-endian u64 header length
LIGHTNING_CALLBACK = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read safely; the message names the file and the problem."""


class LightningCallbackStandIn:
    """Stands in for Lightning's ``ModelCheckpoint`` class in a released checkpoint (the key of ``callbacks``).

    An instance, should a file pickle one, only keeps its pickled state in ``pickled_state``; nothing else runs.
    """

    def __setstate__(self, state):
        self.__dict__["pickled_state"] = state


RELEASED_CHECKPOINT_GLOBALS = [(LightningCallbackStandIn, LIGHTNING_CALLBACK)]


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
    """``torch.load(weights_only=True)`` with the released checkpoints' one extra global allowed for this call;
    memory-mapped when the file is a zip archive (torch cannot map the legacy non-zip format, which is read whole)."""
    check_checkpoint_file(path)
    with open(path, "rb") as handle:
        zip_archive = handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC
    try:
        with torch.serialization.safe_globals(RELEASED_CHECKPOINT_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zip_archive)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{path}: {_refusal(path, error)}") from None
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable torch zip checkpoint (truncated or corrupt?): {error}") from None


def _refusal(path: Path, error: pickle.UnpicklingError) -> str:
    """One line saying which globals the pickle asked for that are not allowed (torch's own message is a page)."""
    allowed = {name for _, name in RELEASED_CHECKPOINT_GLOBALS}
    try:
        unsafe = [name for name in torch.serialization.get_unsafe_globals_in_checkpoint(path) if name not in allowed]
    except (RuntimeError, OSError, ValueError):
        unsafe = []
    if unsafe:
        globals_named = ", ".join(f"pickle global {name}" for name in sorted(unsafe))
        return f"refused: the checkpoint holds code ({globals_named}), not only tensors"
    return f"cannot unpickle checkpoint (truncated or corrupt?): {str(error).splitlines()[0]}"


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

    ``.safetensors`` is read directly; ``.ckpt/.pt/.pth/.bin`` as described in the module docstring (tensors of the
    zip format are memory-mapped, so a 6 GB file does not need 6 GB of RAM up front; the legacy format is read
    whole). A Lightning checkpoint yields its ``"state_dict"`` entry; a file holding a bare ``{name: tensor}`` dict
    yields that dict.
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
