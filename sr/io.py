"""Reading and writing images as float tensors, keeping grey as grey, 16-bit as 16-bit and alpha as alpha.

Images are ``[C, H, W]`` float32 in ``[0, 1]`` (``C = 3`` for RGB, ``1`` for grey); alpha is a separate ``[1, H, W]``.
Pillow decodes everything except 16-bit colour (PNG/TIFF), which Pillow silently reduces to 8 bit; those go through
OpenCV. Writes are atomic (a hidden temporary file in the destination folder, then ``os.replace``) and refuse to
replace an existing file unless ``overwrite=True``. A temporary file is named
``.<name>.partial-<host>_<pid>_<random>.tmp``; one left behind by a killed process is removed by
:func:`remove_stale_temporaries`, which the commands call on their output folders when they start. Only names of
that exact pattern are ever removed: a user's own ``*.tmp`` file is not this project's and is left alone.

Processes that share an output folder divide its files with claims (:func:`try_claim`): ``.<name>.claim``, created
with ``O_EXCL`` and holding ``<host> <pid>``; whoever creates it writes ``<name>``, the others leave it to them. A
claim of a process that is gone (this machine) or older than a day (another machine) is stale and taken over.

EXIF orientation is applied for every format that carries it (JPEG, PNG ``eXIf``, WebP, TIFF), 16-bit included.
"""

import errno
import io
import os
import re
import socket
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
SUFFIX_FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"
}
SIXTEEN_BIT_FORMATS = ("PNG", "TIFF")
ALPHA_FORMATS = ("PNG", "WEBP", "TIFF")
# Pillow's own decompression-bomb threshold: the largest image it opens without warning.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS
# Byte offset of the bit-depth field in a PNG: 8-byte signature, chunk length, "IHDR", width, height.
PNG_BIT_DEPTH_OFFSET = 24
TIFF_BITS_PER_SAMPLE_TAG = 258
EXIF_ORIENTATION_TAG = 0x0112
TEMPORARY_MARK = ".partial-"
_TEMPORARY_NAME = re.compile(r"^\.(?P<name>.+)\.partial-(?P<host>[A-Za-z0-9-]*)_(?P<pid>\d+)_[A-Za-z0-9_]+\.tmp$")
CLAIM_SUFFIX = ".claim"
# a temporary file or claim of another machine (shared file system) is stale after a day
FOREIGN_TEMPORARY_MAX_AGE_S = 24 * 3600
# a claim file is empty only between its creation and the write of its owner: one empty for longer was abandoned
STARTING_CLAIM_MAX_AGE_S = 10.0

ImageMode = Literal["rgb", "gray"]
_SIXTEEN_BIT_PIL_MODES = ("I", "I;16", "I;16B", "I;16L")
_GRAY_PIL_MODES = ("1", "L", "LA", *_SIXTEEN_BIT_PIL_MODES)


class ImageReadError(Exception):
    """An image file that cannot be used; ``str`` is the one line ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason.splitlines()[0] if reason else "unreadable"
        super().__init__(f"{self.path}: {self.reason}")


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image: ``image [C, H, W]`` float32 in ``[0, 1]``; ``alpha [1, H, W]`` or ``None``."""

    image: torch.Tensor
    mode: ImageMode
    alpha: torch.Tensor | None
    bit_depth: int
    source_format: str

    @property
    def rgb(self) -> torch.Tensor:
        """``[3, H, W]``: the image with grey repeated to three channels, alpha dropped."""
        return self.image.expand(3, -1, -1).contiguous() if self.mode == "gray" else self.image


def _to_chw_float(array: np.ndarray, bit_depth: int) -> torch.Tensor:
    scale = float(2**bit_depth - 1)
    array = array.astype(np.float32) / scale
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def _bits_per_sample(path: Path, pil_image: Image.Image) -> int:
    if pil_image.format == "PNG":
        with open(path, "rb") as handle:
            header = handle.read(PNG_BIT_DEPTH_OFFSET + 1)
        return header[PNG_BIT_DEPTH_OFFSET]
    if pil_image.format == "TIFF":
        bits = pil_image.tag_v2.get(TIFF_BITS_PER_SAMPLE_TAG, 1)
        return max(bits) if isinstance(bits, tuple) else int(bits)
    return 8


def _decode_sixteen_bit_colour(path: Path, has_gray_channels: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """OpenCV decode of a 16-bit PNG/TIFF that Pillow would reduce to 8 bit; returns (pixels, alpha) as uint16."""
    decoded = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.dtype != np.uint16:
        raise ImageReadError(path, "could not decode the 16-bit image data")
    if decoded.ndim == 2:
        return decoded, None
    alpha = decoded[:, :, 3] if decoded.shape[2] == 4 else None
    pixels = decoded[:, :, 0] if has_gray_channels else cv2.cvtColor(decoded[:, :, :3], cv2.COLOR_BGR2RGB)
    return pixels, alpha


def _pil_pixels(pil_image: Image.Image) -> tuple[np.ndarray, ImageMode, np.ndarray | None]:
    """8-bit (or Pillow-native 16-bit grey) pixels, their mode, and alpha, from a loaded Pillow image."""
    if pil_image.mode in _SIXTEEN_BIT_PIL_MODES:
        return np.asarray(pil_image).astype(np.uint16), "gray", None
    if pil_image.mode in ("1", "L"):
        return np.asarray(pil_image.convert("L")), "gray", None
    if pil_image.mode == "LA":
        gray_alpha = np.asarray(pil_image)
        return gray_alpha[:, :, 0], "gray", gray_alpha[:, :, 1]
    has_alpha = pil_image.mode in ("RGBA", "PA", "RGBa") or "transparency" in pil_image.info
    if has_alpha:
        rgba = np.asarray(pil_image.convert("RGBA"))
        return rgba[:, :, :3], "rgb", rgba[:, :, 3]
    return np.asarray(pil_image.convert("RGB")), "rgb", None


def apply_exif_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """``array [H, W, ...]`` as displayed under EXIF ``orientation`` (1..8), as ``PIL.ImageOps.exif_transpose``:
    2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 anticlockwise."""
    transforms = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }
    return transforms[orientation](array) if orientation in transforms else array


def _open_image(path: Path, max_pixels: int) -> Image.Image:
    """Pillow's lazy handle on ``path`` (header read only); ``ImageReadError`` for a missing, unrecognised or too
    large image."""
    if not path.is_file():
        raise ImageReadError(path, "no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            pil_image = Image.open(path)
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image file (format not recognised)") from None
    except Image.DecompressionBombError as error:
        raise ImageReadError(path, f"image too large ({error})") from None
    width, height = pil_image.size
    if width * height > max_pixels:
        pil_image.close()
        raise ImageReadError(path, f"image too large: {width}x{height} exceeds {max_pixels} pixels")
    return pil_image


def image_size(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(height, width)`` of an image file from its header, without decoding the pixels (as read: the EXIF
    orientation is not applied, which does not change the pixel count). Raises ``ImageReadError`` like
    :func:`read_image`."""
    with _open_image(Path(path), max_pixels) as pil_image:
        width, height = pil_image.size
    return height, width


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode a PNG, JPEG, WebP, TIFF or BMP file (8/16-bit, grey or colour, optional alpha).

    Raises ``ImageReadError`` for a missing file, a file that is not an image, truncated or corrupt data, an image
    over ``max_pixels`` pixels (checked from the header, before decoding) or an unsupported sample format.
    """
    path = Path(path)
    with _open_image(path, max_pixels) as pil_image:
        bits = _bits_per_sample(path, pil_image)
        if bits > 8 and bits != 16:
            raise ImageReadError(path, f"unsupported bit depth {bits} (expected at most 8, or 16)")
        try:
            pil_image.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageReadError(path, f"truncated or corrupt image data ({error})") from None
        if bits == 16 and pil_image.mode not in _SIXTEEN_BIT_PIL_MODES:
            mode: ImageMode = "gray" if pil_image.mode in _GRAY_PIL_MODES else "rgb"
            pixels, alpha = _decode_sixteen_bit_colour(path, has_gray_channels=mode == "gray")
            return _loaded(pil_image, pixels, mode, alpha, 16)
        return _decode_pil(pil_image, 16 if bits == 16 else 8)


def image_from_pil(pil_image: Image.Image, name: str = "PIL image") -> LoadedImage:
    """A Pillow image already in memory, decoded as :func:`read_image` decodes its file (grey kept grey, 16-bit grey
    scaled by 65535, alpha apart, EXIF orientation applied). Pillow itself holds 16-bit colour files as 8 bit: pass
    the file's path to keep their 16 bits. ``name`` names the image in an ``ImageReadError``."""
    if pil_image.mode == "I":  # 32-bit integer pixels: 16-bit grey when they fit, as Pillow decodes such PNGs
        low, high = pil_image.getextrema()
        if low < 0 or high > 2**16 - 1:
            raise ImageReadError(name, f"integer pixels in [{low}, {high}] do not fit 16 bits")
    return _decode_pil(pil_image, 16 if pil_image.mode in _SIXTEEN_BIT_PIL_MODES else 8)


def _decode_pil(pil_image: Image.Image, bit_depth: int) -> LoadedImage:
    pixels, mode, alpha = _pil_pixels(pil_image)
    return _loaded(pil_image, pixels, mode, alpha, bit_depth)


def _loaded(pil_image: Image.Image, pixels: np.ndarray, mode: ImageMode, alpha: np.ndarray | None,
            bit_depth: int) -> LoadedImage:
    """The ``LoadedImage`` of decoded ``pixels``/``alpha`` as displayed (``pil_image``'s EXIF orientation)."""
    orientation = pil_image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    pixels = apply_exif_orientation(pixels, orientation)
    alpha = None if alpha is None else apply_exif_orientation(alpha, orientation)
    return LoadedImage(
        image=_to_chw_float(pixels, bit_depth),
        mode=mode,
        alpha=None if alpha is None else _to_chw_float(alpha, bit_depth),
        bit_depth=bit_depth,
        source_format=pil_image.format or "",
    )


def _quantise(tensor: torch.Tensor, bit_depth: int) -> np.ndarray:
    """``[C, H, W]`` in [0, 1] -> ``[H, W, C]`` integers, rounded to nearest."""
    scale = 2**bit_depth - 1
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    values = (tensor.detach().float().clamp(0, 1) * scale).round().cpu().numpy().astype(dtype)
    return values.transpose(1, 2, 0)


def _encode(
    path: Path, image_format: str, pixels: np.ndarray, alpha: np.ndarray | None, bit_depth: int, quality: int
) -> bytes:
    if bit_depth == 16:
        if pixels.shape[2] == 1 and alpha is None:
            array = pixels[:, :, 0]
        elif pixels.shape[2] == 3:
            bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
            array = bgr if alpha is None else np.concatenate([bgr, alpha], axis=2)
        else:
            raise ValueError(f"{path}: 16-bit grey with alpha cannot be written; write it as 8-bit or RGBA")
        ok, encoded = cv2.imencode(Path(path).suffix.lower(), array)
        if not ok:
            raise ValueError(f"{path}: OpenCV failed to encode the 16-bit {image_format} image")
        return encoded.tobytes()
    if image_format == "WEBP" and pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    layers = pixels if alpha is None else np.concatenate([pixels, alpha], axis=2)
    # Pillow infers L / LA / RGB / RGBA from the uint8 array's channel count.
    pil_image = Image.fromarray(layers[:, :, 0] if layers.shape[2] == 1 else layers)
    buffer = io.BytesIO()
    options = {"quality": quality} if image_format in ("JPEG", "WEBP") else {}
    pil_image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def write_image(
    path: str | os.PathLike,
    image: torch.Tensor,
    alpha: torch.Tensor | None = None,
    bit_depth: int = 8,
    overwrite: bool = False,
    quality: int = 95,
) -> Path:
    """Atomically write ``image [C, H, W]`` (``C`` 1 or 3, values in [0, 1]) in the format named by the suffix.

    ``alpha [1, H, W]`` is stored for PNG, WebP and TIFF; ``bit_depth=16`` for PNG and TIFF; ``quality`` applies to
    JPEG and WebP. Grey stays single-channel (WebP, which has no grey mode, stores it as RGB). Raises
    ``FileExistsError`` when ``path`` exists and ``overwrite`` is false. Returns the written path.
    """
    path = Path(path)
    image_format = SUFFIX_FORMATS.get(path.suffix.lower())
    if image_format is None:
        raise ValueError(f"{path}: unsupported image suffix; expected one of {', '.join(IMAGE_SUFFIXES)}")
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"{path}: image must be [C, H, W] with C = 1 or 3, got shape {tuple(image.shape)}")
    if alpha is not None and (alpha.ndim != 3 or alpha.shape[0] != 1 or alpha.shape[1:] != image.shape[1:]):
        raise ValueError(f"{path}: alpha must be [1, H, W] matching the image, got shape {tuple(alpha.shape)}")
    if bit_depth not in (8, 16):
        raise ValueError(f"{path}: bit depth must be 8 or 16, got {bit_depth}")
    if bit_depth == 16 and image_format not in SIXTEEN_BIT_FORMATS:
        raise ValueError(f"{path}: {image_format} cannot store 16-bit images; use .png or .tif")
    if alpha is not None and image_format not in ALPHA_FORMATS:
        raise ValueError(f"{path}: {image_format} cannot store an alpha channel; use .png, .webp or .tif")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
    pixels = _quantise(image, bit_depth)
    encoded = _encode(path, image_format, pixels, None if alpha is None else _quantise(alpha, bit_depth), bit_depth,
                      quality)
    return write_bytes_atomic(path, encoded, overwrite=overwrite)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, overwrite: bool = False, durable: bool = False) -> Path:
    """Write ``data`` to a hidden temporary file beside ``path``, then ``os.replace`` it into place (mode 0644).

    Readers never see a half-written file. Raises ``FileExistsError`` when ``path`` exists and ``overwrite`` is false.
    ``durable``: the data and the rename reach the disk (``fsync`` of the file and its folder) before this returns,
    so a crash of the machine right after cannot leave an empty file (checkpoints).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}{TEMPORARY_MARK}{host_tag()}_{os.getpid()}_", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(temporary, path)
        if durable:
            folder = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def host_tag() -> str:
    """This machine's name as temporary-file names and claims carry it (characters other than ``A-Za-z0-9-`` as
    ``-``)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _owner_gone(host: str, pid: int, path: Path) -> bool:
    """Whether the process ``pid`` on ``host`` that wrote ``path`` no longer runs (another host's: ``path`` is older
    than ``FOREIGN_TEMPORARY_MAX_AGE_S``)."""
    if host == host_tag():
        return not _process_alive(pid)
    return _older_than(path, FOREIGN_TEMPORARY_MAX_AGE_S)


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except FileNotFoundError:
        return False


def claim_path(path: str | os.PathLike) -> Path:
    """The claim file of ``path``: ``.<name>.claim`` beside it."""
    path = Path(path)
    return path.parent / f".{path.name}{CLAIM_SUFFIX}"


def _claim_owner(claim: Path) -> tuple[str, int] | None:
    """``(host, pid)`` recorded in a claim file, or None while it is being created (empty) or unreadable."""
    try:
        host, pid = claim.read_text().split()
        return host, int(pid)
    except (OSError, ValueError):
        return None


def try_claim(path: str | os.PathLike) -> str | None:
    """Claim ``path`` for this process (module docstring); returns None when this process holds the claim now (or
    already did), else who holds it (``"pid <pid> on <host>"``). A stale claim is removed and claimed afresh."""
    claim = claim_path(path)
    for _attempt in range(3):
        try:
            descriptor = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _claim_owner(claim)
            if owner == (host_tag(), os.getpid()):
                return None
            if owner is None and not _older_than(claim, STARTING_CLAIM_MAX_AGE_S):
                return "a process that is starting"
            if owner is not None and not _owner_gone(*owner, claim):
                return f"pid {owner[1]} on {owner[0]}"
            claim.unlink(missing_ok=True)
            continue
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f"{host_tag()} {os.getpid()}\n")
        return None
    return "another process"


def release_claim(path: str | os.PathLike) -> None:
    """Remove this process's claim of ``path`` (a claim of another process is left alone)."""
    claim = claim_path(path)
    if _claim_owner(claim) == (host_tag(), os.getpid()):
        claim.unlink(missing_ok=True)


@contextmanager
def holding_claim(path: str | os.PathLike, timeout_s: float = 60.0) -> Iterator[None]:
    """Hold the claim of ``path`` for the block, waiting up to ``timeout_s`` for another process to release it
    (a short critical section such as updating a shared record); ``TimeoutError`` names the holder."""
    deadline = time.monotonic() + timeout_s
    while (holder := try_claim(path)) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: held by {holder} for more than {timeout_s:.0f} s; "
                               f"remove {claim_path(path)} if that process is gone")
        time.sleep(0.02)
    try:
        yield
    finally:
        release_claim(path)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the hidden temporary files of :func:`write_bytes_atomic` and the claims (:func:`try_claim`) in
    ``folder`` whose writer is gone.

    Stale: written on this machine by a process that no longer runs (killed mid-write), or older than
    ``FOREIGN_TEMPORARY_MAX_AGE_S`` when written on another machine. Only this module's own names are considered
    (a ``*.tmp`` file of any other name is not ours); a live writer's file is never touched. Returns the deleted
    paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.glob(".*")):
        match = _TEMPORARY_NAME.match(entry.name)
        owner = (match["host"], int(match["pid"])) if match else (
            _claim_owner(entry) if entry.name.endswith(CLAIM_SUFFIX) else None)
        if owner is not None and _owner_gone(*owner, entry) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


@dataclass(frozen=True)
class FolderListing:
    """The entries of an input: ``images`` (files, by suffix), ``others`` (files that are not, e.g. ``.txt``,
    ``.gif``, and folders named like an image, e.g. ``x.png/``) and ``broken`` (``{link: problem}`` for symbolic
    links that lead nowhere: dangling, or a loop)."""

    images: list[Path]
    others: list[Path]
    broken: dict[Path, str]


def broken_link_problem(path: Path) -> str | None:
    """Why the symbolic link ``path`` cannot be read (``"symbolic link loop"`` / ``"dangling symbolic link to
    <target>"``), or None when ``path`` is not a link or leads to something."""
    if not path.is_symlink():
        return None
    try:
        path.stat()
    except FileNotFoundError:
        return f"dangling symbolic link to {os.readlink(path)} (no such file)"
    except OSError as error:  # ELOOP
        return "symbolic link loop" if error.errno == errno.ELOOP else f"unreadable symbolic link ({error.strerror})"
    return None


def scan_images(path_or_folder: str | os.PathLike, recursive: bool = False) -> FolderListing:
    """:func:`list_images` plus the visible entries it leaves out, so a command can count and name them."""
    path = Path(path_or_folder)
    if problem := broken_link_problem(path):
        raise ImageReadError(path, problem)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ImageReadError(path, f"not an image file name; expected one of {', '.join(IMAGE_SUFFIXES)}")
        return FolderListing([path], [], {})
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    entries = sorted(
        entry for entry in (path.rglob("*") if recursive else path.iterdir())
        if not any(part.startswith(".") for part in entry.relative_to(path).parts)
    )
    files = [entry for entry in entries if entry.is_file()]
    image_named_folders = [entry for entry in entries if entry.is_dir() and entry.suffix.lower() in IMAGE_SUFFIXES]
    return FolderListing(
        images=[entry for entry in files if entry.suffix.lower() in IMAGE_SUFFIXES],
        others=sorted([entry for entry in files if entry.suffix.lower() not in IMAGE_SUFFIXES] + image_named_folders),
        broken={entry: problem for entry in entries if (problem := broken_link_problem(entry))},
    )


def list_images(path_or_folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """The image files (by suffix, case-insensitive) in a folder, sorted; or ``[file]`` for an image file.

    Hidden files are skipped; ``recursive`` also lists sub-folders (hidden ones skipped too), as training roots need.
    """
    return scan_images(path_or_folder, recursive).images
