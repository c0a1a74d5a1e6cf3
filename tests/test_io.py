"""Image reading/writing: round trips per format, bit depth, grey, alpha, errors and atomic no-clobber writes."""

import numpy as np
import pytest
import torch
from PIL import Image

from sr.io import ImageReadError, list_images, read_image, write_bytes_atomic, write_image


def _smooth_rgb(height=24, width=32, channels=3) -> torch.Tensor:
    """A smooth image (lossy codecs reproduce it closely), values strictly inside [0, 1]."""
    ys = torch.linspace(0, 1, height)[:, None]
    xs = torch.linspace(0, 1, width)[None, :]
    planes = [0.1 + 0.8 * ys * xs, 0.2 + 0.6 * ys, 0.9 - 0.7 * xs][:channels]
    return torch.stack([p.expand(height, width) for p in planes])


def _assert_no_temp_files(folder):
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


LOSSLESS = (".png", ".tif", ".bmp")


# Lossless formats are exact to half a level; lossy ones (4:2:0 chroma) are bounded in max and mean error.
@pytest.mark.parametrize(
    "suffix,max_error,mean_error",
    [(".png", 0.5 / 255, 0.5 / 255), (".tif", 0.5 / 255, 0.5 / 255), (".bmp", 0.5 / 255, 0.5 / 255),
     (".jpg", 0.05, 0.01), (".webp", 0.05, 0.01)],
)
def test_rgb_round_trip_per_format(tmp_path, suffix, max_error, mean_error):
    image = _smooth_rgb()
    written = write_image(tmp_path / f"out{suffix}", image)
    loaded = read_image(written)
    assert loaded.mode == "rgb" and loaded.bit_depth == 8 and loaded.alpha is None
    assert loaded.image.dtype == torch.float32 and loaded.image.shape == (3, 24, 32)
    assert loaded.source_format == {".png": "PNG", ".tif": "TIFF", ".bmp": "BMP", ".jpg": "JPEG",
                                    ".webp": "WEBP"}[suffix]
    error = (loaded.image - image).abs()
    assert error.max() <= max_error + 1e-6 and error.mean() <= mean_error
    if suffix in LOSSLESS:  # exactly the nearest 8-bit level: 0 levels lost by the file
        torch.testing.assert_close(loaded.image, (image * 255).round() / 255, rtol=0, atol=1e-7)
    _assert_no_temp_files(tmp_path)


def test_eight_bit_values_are_exact(tmp_path):
    levels = torch.randint(0, 256, (3, 9, 11)).float() / 255
    loaded = read_image(write_image(tmp_path / "exact.png", levels))
    torch.testing.assert_close(loaded.image, levels, rtol=0, atol=1e-7)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("channels", [1, 3])
def test_sixteen_bit_precision_is_kept(tmp_path, suffix, channels):
    levels = torch.randint(0, 65536, (channels, 7, 10)).float() / 65535
    loaded = read_image(write_image(tmp_path / f"deep{suffix}", levels, bit_depth=16))
    assert loaded.bit_depth == 16
    assert loaded.mode == ("gray" if channels == 1 else "rgb")
    # Exact to the 16-bit level (an 8-bit path would be off by up to 1/510).
    torch.testing.assert_close(loaded.image, levels, rtol=0, atol=1e-7)


def test_sixteen_bit_rgba_keeps_alpha(tmp_path):
    image = torch.randint(0, 65536, (3, 5, 6)).float() / 65535
    alpha = torch.randint(0, 65536, (1, 5, 6)).float() / 65535
    loaded = read_image(write_image(tmp_path / "deep_alpha.png", image, alpha=alpha, bit_depth=16))
    assert loaded.bit_depth == 16 and loaded.mode == "rgb"
    torch.testing.assert_close(loaded.image, image, rtol=0, atol=1e-7)
    torch.testing.assert_close(loaded.alpha, alpha, rtol=0, atol=1e-7)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_gray_stays_gray(tmp_path, suffix):
    gray = _smooth_rgb(channels=1)
    written = write_image(tmp_path / f"gray{suffix}", gray)
    assert Image.open(written).mode == "L"
    loaded = read_image(written)
    assert loaded.mode == "gray" and loaded.image.shape == (1, 24, 32)
    if suffix in LOSSLESS:  # exactly the nearest 8-bit level
        torch.testing.assert_close(loaded.image, (gray * 255).round() / 255, rtol=0, atol=1e-7)
    else:  # JPEG: a smooth grey ramp within 2 levels
        assert (loaded.image - gray).abs().max() <= 2 / 255


@pytest.mark.parametrize("suffix", [".png", ".webp", ".tif"])
def test_rgba_alpha_is_kept(tmp_path, suffix):
    image = torch.randint(0, 256, (3, 8, 8)).float() / 255
    alpha = torch.randint(0, 256, (1, 8, 8)).float() / 255
    # WebP colour is lossy even at quality 100, but its alpha plane is stored losslessly.
    loaded = read_image(write_image(tmp_path / f"alpha{suffix}", image, alpha=alpha, quality=100))
    assert loaded.mode == "rgb" and loaded.alpha is not None and loaded.alpha.shape == (1, 8, 8)
    torch.testing.assert_close(loaded.alpha, alpha, rtol=0, atol=1e-7)
    if suffix != ".webp":
        torch.testing.assert_close(loaded.image, image, rtol=0, atol=1e-7)


def test_gray_with_alpha_png(tmp_path):
    gray = torch.randint(0, 256, (1, 6, 5)).float() / 255
    alpha = torch.randint(0, 256, (1, 6, 5)).float() / 255
    loaded = read_image(write_image(tmp_path / "ga.png", gray, alpha=alpha))
    assert loaded.mode == "gray"
    torch.testing.assert_close(loaded.image, gray, rtol=0, atol=1e-7)
    torch.testing.assert_close(loaded.alpha, alpha, rtol=0, atol=1e-7)


def test_palette_png_with_transparency_reads_as_rgba(tmp_path):
    palette_image = Image.new("P", (4, 3))
    palette_image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette_image.putpixel((1, 1), 1)
    palette_image.info["transparency"] = 0
    palette_image.save(tmp_path / "palette.png", transparency=0)
    loaded = read_image(tmp_path / "palette.png")
    assert loaded.mode == "rgb" and loaded.bit_depth == 8
    assert loaded.alpha[0, 1, 1] == 1 and loaded.alpha[0, 0, 0] == 0
    torch.testing.assert_close(loaded.image[:, 1, 1], torch.tensor([0.0, 0.0, 1.0]))


def test_truncated_file_raises_with_file_name(tmp_path):
    full = write_image(tmp_path / "full.png", torch.rand(3, 64, 64)).read_bytes()
    broken = tmp_path / "broken.png"
    broken.write_bytes(full[: len(full) // 2])
    with pytest.raises(ImageReadError, match=r"broken\.png: truncated or corrupt") as caught:
        read_image(broken)
    assert "\n" not in str(caught.value)


def test_truncated_jpeg_raises(tmp_path):
    full = write_image(tmp_path / "full.jpg", torch.rand(3, 64, 64)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(full[: len(full) // 3])
    with pytest.raises(ImageReadError, match=r"cut\.jpg: truncated or corrupt"):
        read_image(tmp_path / "cut.jpg")


def test_not_an_image_and_missing_file(tmp_path):
    (tmp_path / "notes.png").write_text("this is not a picture")
    with pytest.raises(ImageReadError, match=r"notes\.png: not an image file"):
        read_image(tmp_path / "notes.png")
    with pytest.raises(ImageReadError, match=r"absent\.png: no such file"):
        read_image(tmp_path / "absent.png")


def test_too_large_raises_before_decoding(tmp_path):
    written = write_image(tmp_path / "big.png", torch.rand(3, 20, 30))
    with pytest.raises(ImageReadError, match=r"big\.png: image too large: 30x20 exceeds 599 pixels"):
        read_image(written, max_pixels=599)
    assert read_image(written, max_pixels=600).image.shape == (3, 20, 30)


def test_no_overwrite_unless_asked_and_atomic(tmp_path):
    target = tmp_path / "keep.png"
    write_image(target, torch.zeros(3, 4, 4))
    before = target.read_bytes()
    with pytest.raises(FileExistsError, match=r"keep\.png: already exists"):
        write_image(target, torch.ones(3, 4, 4))
    assert target.read_bytes() == before
    write_image(target, torch.ones(3, 4, 4), overwrite=True)
    torch.testing.assert_close(read_image(target).image, torch.ones(3, 4, 4))
    _assert_no_temp_files(tmp_path)


def test_failed_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(ValueError, match=r"x\.jpg: JPEG cannot store 16-bit"):
        write_image(tmp_path / "x.jpg", torch.rand(3, 4, 4), bit_depth=16)
    with pytest.raises(ValueError, match=r"x\.jpg: JPEG cannot store an alpha"):
        write_image(tmp_path / "x.jpg", torch.rand(3, 4, 4), alpha=torch.rand(1, 4, 4))
    with pytest.raises(ValueError, match=r"x\.gif: unsupported image suffix"):
        write_image(tmp_path / "x.gif", torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match=r"C = 1 or 3"):
        write_image(tmp_path / "x.png", torch.rand(2, 4, 4))
    assert list(tmp_path.iterdir()) == []


def test_list_images(tmp_path):
    for name in ["b.PNG", "a.jpg", "c.tiff", ".hidden.png", "readme.txt"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.tiff"]
    assert list_images(tmp_path / "a.jpg") == [tmp_path / "a.jpg"]
    with pytest.raises(ImageReadError, match=r"readme\.txt: not an image file name"):
        list_images(tmp_path / "readme.txt")
    with pytest.raises(FileNotFoundError, match="nowhere: no such file or folder"):
        list_images(tmp_path / "nowhere")


def test_list_images_recursive_skips_hidden_files_and_folders(tmp_path):
    for name in ["top.png", "sub/deeper/x.JPG", "sub/y.webp", "sub/.partial.png", ".cache/z.png", "sub/notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)]
    assert found == ["sub/deeper/x.JPG", "sub/y.webp", "top.png"]
    assert list_images(tmp_path) == [tmp_path / "top.png"]


def test_rgb_repeats_gray_and_drops_alpha(tmp_path):
    gray = torch.randint(0, 256, (1, 5, 4)).float() / 255
    loaded = read_image(write_image(tmp_path / "g.png", gray, alpha=torch.ones(1, 5, 4)))
    assert loaded.rgb.shape == (3, 5, 4) and loaded.rgb.is_contiguous()
    for channel in range(3):
        torch.testing.assert_close(loaded.rgb[channel], gray[0], rtol=0, atol=1e-7)
    colour = torch.randint(0, 256, (3, 5, 4)).float() / 255
    loaded = read_image(write_image(tmp_path / "c.png", colour, alpha=torch.zeros(1, 5, 4)))
    torch.testing.assert_close(loaded.rgb, colour, rtol=0, atol=1e-7)


def test_written_files_are_readable_by_others(tmp_path):
    written = write_image(tmp_path / "shared.png", torch.zeros(3, 2, 2))
    assert written.stat().st_mode & 0o777 == 0o644


def test_write_bytes_atomic_refuses_to_clobber(tmp_path):
    target = write_bytes_atomic(tmp_path / "nested" / "list.txt", b"first\n")
    assert target.read_bytes() == b"first\n" and target.stat().st_mode & 0o777 == 0o644
    with pytest.raises(FileExistsError, match=r"list\.txt: already exists"):
        write_bytes_atomic(target, b"second\n")
    assert target.read_bytes() == b"first\n"
    write_bytes_atomic(target, b"second\n", overwrite=True)
    assert target.read_bytes() == b"second\n"
    _assert_no_temp_files(target.parent)


def test_reads_project_sample(tmp_path):
    loaded = read_image("data/samples/heldout/camera.png")
    assert loaded.image.min() >= 0 and loaded.image.max() <= 1
    assert loaded.image.shape[0] == (1 if loaded.mode == "gray" else 3)
    np.testing.assert_allclose(
        loaded.image.numpy().transpose(1, 2, 0).squeeze(),
        np.asarray(Image.open("data/samples/heldout/camera.png")).astype(np.float32) / 255,
        atol=1e-7,
    )
