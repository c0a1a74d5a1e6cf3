"""Datasets, data module (batches, pool, resume), data configs, synthetic test-set and dataset-layout scripts."""

import importlib.util
import os
import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sr.compat.basicsr import USMSharp
from sr.data.augment import colour_jitter, hue_rotation_matrix
from sr.data.datamodule import EpochSeededSampler, SRDataModule
from sr.data.datasets import HRImageDataset, PairedImageDataset, pad_to_min_size
from sr.data.degradations import DegradationPipeline
from sr.io import read_image
from sr.utils.distributed import derived_seed

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "data" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_png(path: Path, height: int, width: int, seed: int = 0, gray: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(height, width) if gray else (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)
    return image


def realesrgan() -> DegradationPipeline:
    return instantiate(OmegaConf.load(ROOT / "conf" / "degradation" / "realesrgan.yaml"))


def test_crops_have_crop_size_and_are_reproducible(tmp_path):
    write_png(tmp_path / "a.png", 40, 50)
    write_png(tmp_path / "sub" / "b.png", 33, 80, seed=1)
    dataset = HRImageDataset([str(tmp_path)], crop_size=32, seed=3)
    assert len(dataset) == 2
    for index in range(2):
        item = dataset[(index, 11)]
        assert item["gt"].shape == (3, 32, 32) and item["gt"].dtype == torch.float32
        assert 0 <= item["gt"].min() and item["gt"].max() <= 1
        assert torch.equal(item["gt"], dataset[(index, 11)]["gt"])
    assert not all(torch.equal(dataset[(0, s)]["gt"], dataset[(0, 11)]["gt"]) for s in range(12, 20))


def test_hue_rotation_by_a_third_turn_permutes_the_channels_and_keeps_grey_and_intensity():
    """120 degrees about the grey axis maps R -> G -> B -> R (an oracle independent of Rodrigues' formula)."""
    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    rotated = torch.einsum("ij,jhw->ihw", hue_rotation_matrix(2 * np.pi / 3), image)
    torch.testing.assert_close(rotated, image[[2, 0, 1]], rtol=0, atol=1e-6)
    angle = 0.7
    rotation = hue_rotation_matrix(angle)
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(3), rtol=0, atol=1e-6)
    torch.testing.assert_close(rotation @ torch.ones(3), torch.ones(3), rtol=0, atol=1e-6)


def test_colour_jitter_keeps_grey_grey_is_seeded_and_changes_colour():
    grey = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(1)).expand(3, -1, -1)
    jittered = colour_jitter(grey, np.random.default_rng(5))
    torch.testing.assert_close(jittered[0], jittered[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(jittered[1], jittered[2], rtol=0, atol=1e-6)
    red = torch.zeros(3, 4, 4)
    red[0] = 0.8
    outputs = [colour_jitter(red, np.random.default_rng(seed)) for seed in range(8)]
    assert torch.equal(outputs[3], colour_jitter(red, np.random.default_rng(3)))
    dominant = {int(output.mean(dim=(1, 2)).argmax()) for output in outputs}
    assert dominant == {0, 1, 2}  # hues all round the circle: red also becomes green- and blue-dominant
    assert all(0 <= float(output.min()) and float(output.max()) <= 1 for output in outputs)


def test_colour_jitter_option_of_the_training_crops(tmp_path):
    write_png(tmp_path / "a.png", 40, 40)
    plain = HRImageDataset([str(tmp_path)], crop_size=32, seed=3)
    jittered = HRImageDataset([str(tmp_path)], crop_size=32, seed=3, use_colour_jitter=True)
    assert not torch.equal(plain[(0, 4)]["gt"], jittered[(0, 4)]["gt"])
    assert torch.equal(jittered[(0, 4)]["gt"], jittered[(0, 4)]["gt"])


def test_small_image_is_reflect_padded(tmp_path):
    original = write_png(tmp_path / "small.png", 20, 30)
    rgb = torch.from_numpy(original[:, :, ::-1].astype(np.float32) / 255).permute(2, 0, 1)
    padded = pad_to_min_size(rgb, 64)
    assert padded.shape == (3, 64, 64)
    torch.testing.assert_close(padded[:, :20, :30], rgb, rtol=0, atol=0)
    torch.testing.assert_close(padded[:, 20, :30], rgb[:, 18], rtol=0, atol=0)  # mirror without repeating the edge
    torch.testing.assert_close(padded[:, :20, 31], rgb[:, :, 27], rtol=0, atol=0)
    item = HRImageDataset([str(tmp_path)], crop_size=64, use_hflip=False)[0]
    torch.testing.assert_close(item["gt"], padded, rtol=0, atol=1e-6)


def test_unreadable_image_is_skipped_and_reported(tmp_path):
    write_png(tmp_path / "a.png", 40, 40)
    (tmp_path / "b_broken.png").write_bytes(b"not an image")
    write_png(tmp_path / "c.png", 40, 40, seed=2)
    dataset = HRImageDataset([str(tmp_path)], crop_size=16)
    with pytest.warns(UserWarning, match="b_broken.png"):
        item = dataset[1]
    assert item["path"].endswith("c.png")
    assert dataset.bad_files == {str(tmp_path / "b_broken.png")}
    assert [Path(dataset[i]["path"]).name for i in range(3)] == ["a.png", "c.png", "c.png"]


def test_sixteen_bit_rgba_and_hidden_files(tmp_path):
    rng = np.random.default_rng(4)
    deep = rng.integers(0, 65536, size=(16, 16, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    bgra = rng.integers(0, 256, size=(16, 16, 4), dtype=np.uint8)
    (tmp_path / "nested").mkdir()
    cv2.imwrite(str(tmp_path / "nested" / "alpha.png"), bgra)
    write_png(tmp_path / ".hidden.png", 16, 16)  # e.g. a half-written temporary file: never listed
    dataset = HRImageDataset([str(tmp_path)], crop_size=16, use_hflip=False)
    assert [Path(path).name for path in dataset.paths] == ["deep.png", "alpha.png"]
    expected_deep = deep[:, :, ::-1].transpose(2, 0, 1).astype(np.float64) / 65535
    np.testing.assert_allclose(dataset[0]["gt"].numpy(), expected_deep, rtol=0, atol=1e-7)
    expected_rgb = bgra[:, :, 2::-1].transpose(2, 0, 1).astype(np.float64) / 255  # alpha dropped
    np.testing.assert_allclose(dataset[1]["gt"].numpy(), expected_rgb, rtol=0, atol=1e-7)


def test_meta_info_and_gray_images(tmp_path):
    write_png(tmp_path / "imgs" / "g.png", 24, 24, gray=True)
    (tmp_path / "meta.txt").write_text("imgs/g.png (24,24,1)\n\n")
    item = HRImageDataset([], crop_size=16, meta_info=str(tmp_path / "meta.txt"))[0]
    assert torch.equal(item["gt"][0], item["gt"][1]) and torch.equal(item["gt"][1], item["gt"][2])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        HRImageDataset([], crop_size=16, meta_info=str(tmp_path / "missing.txt"))


def test_paired_dataset_matches_stems_and_lists_unmatched(tmp_path):
    write_png(tmp_path / "lr" / "x.png", 8, 8)
    write_png(tmp_path / "hr" / "x.png", 32, 32)
    item = PairedImageDataset(str(tmp_path / "lr"), str(tmp_path / "hr"))[0]
    assert item["lq"].shape == (3, 8, 8) and item["gt"].shape == (3, 32, 32) and item["name"] == "x"
    write_png(tmp_path / "lr" / "only_lr.png", 8, 8)
    with pytest.raises(ValueError, match="only_lr"):
        PairedImageDataset(str(tmp_path / "lr"), str(tmp_path / "hr"))


def test_sampler_order_depends_on_seed_and_epoch():
    sampler = EpochSeededSampler(50, seed=1)
    first = list(sampler)
    assert sorted(index for index, _ in first) == list(range(50))
    assert list(EpochSeededSampler(50, seed=1)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    epoch_one = list(sampler)
    sampler.skip_next(1, 10)
    assert list(sampler) == epoch_one[10:]
    assert list(sampler) == epoch_one  # the skip applies to one pass only
    sampler.skip_next(0, 10)
    assert list(sampler) == epoch_one  # ... and only to its epoch


def train_batches(datamodule: SRDataModule, count: int, first_epoch: int = 0):
    """``count`` transferred training batches, running over epochs as Lightning does (set_epoch at each start)."""
    loader, epoch, produced = datamodule.train_dataloader(), first_epoch, 0
    while produced < count:
        datamodule.sampler.set_epoch(epoch)
        for raw in loader:
            yield datamodule.on_after_batch_transfer(raw, 0)
            produced += 1
            if produced == count:
                return
        epoch += 1


def make_datamodule(pool_size: int = 4, train_dir: Path = ROOT / "data" / "samples" / "train") -> SRDataModule:
    return SRDataModule(
        train_dirs=[str(train_dir)], crop_size=32, batch_size=2, degradation=realesrgan(),
        pool_size=pool_size, seed=5, val_lr_dir=str(ROOT / "data/samples/heldout_pairs/lr"),
        val_hr_dir=str(ROOT / "data/samples/heldout_pairs/hr"),
    )


def test_training_batches_shapes_ranges_and_target():
    datamodule = make_datamodule()
    raw = next(iter(datamodule.train_dataloader()))
    batch = datamodule.on_after_batch_transfer(raw, 0)
    assert batch["lq"].shape == batch["gt"].shape == (2, 3, 32, 32)
    assert batch["lq"].min() >= -1 and batch["lq"].max() <= 1
    torch.testing.assert_close(batch["gt"], USMSharp()(raw["gt"]) * 2 - 1, atol=1e-6, rtol=0)  # pool filling
    assert not torch.equal(batch["lq"], batch["gt"])
    val = next(iter(datamodule.val_dataloader()))
    assert datamodule.on_after_batch_transfer(val, 0) is val and val["lq"].shape[-1] * 4 == val["gt"].shape[-1]


def test_pool_returns_earlier_pairs_once_full():
    datamodule = make_datamodule(pool_size=4)
    *filling, pooled = train_batches(datamodule, 3)
    targets = torch.cat([b["gt"] for b in filling])
    pooled = pooled["gt"]
    for sample in pooled:  # the returned pair comes from the pool, not from this batch
        assert any(torch.equal(sample, stored) for stored in targets)


def four_photos(folder: Path) -> Path:
    """A training folder of the first 4 bundled photos: the resume tests count batches per epoch from it."""
    folder.mkdir()
    for photo in sorted((ROOT / "data" / "samples" / "train").glob("*.png"))[:4]:
        shutil.copy(photo, folder)
    return folder


def test_state_dict_round_trip_reproduces_next_batch(tmp_path):
    four = four_photos(tmp_path / "four")
    datamodule = make_datamodule(pool_size=4, train_dir=four)  # 4 images, batch 2: two batches per epoch
    batches = train_batches(datamodule, 5)
    for _ in range(3):  # epoch 0 and the first batch of epoch 1; the pool is full after two
        next(batches)
    path = tmp_path / "state.pt"
    torch.save(datamodule.state_dict(), path)
    expected = [next(batches), next(batches)]  # rest of epoch 1, first of epoch 2

    resumed = make_datamodule(pool_size=4, train_dir=four)
    resumed.load_state_dict(torch.load(path, weights_only=True))
    actual = list(train_batches(resumed, 2, first_epoch=1))
    for got, want in zip(actual, expected):
        assert torch.equal(got["lq"], want["lq"]) and torch.equal(got["gt"], want["gt"])


@pytest.mark.parametrize("name", ["samples_tiny", "samples_heldout", "df2k_ost", "div2k_val", "realsr", "drealsr"])
def test_data_configs_instantiate(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # folders come from paths.data_dir, not the working directory
    paths = {"paths": {"data_dir": str(ROOT / "data")}}
    config = OmegaConf.merge(paths, {"data": OmegaConf.load(ROOT / "conf" / "data" / f"{name}.yaml")}).data
    if name in ("samples_tiny", "samples_heldout"):
        if "degradation" in config:
            config = OmegaConf.merge({"degradation": OmegaConf.load(ROOT / "conf/degradation/bicubic.yaml")},
                                     paths, {"data": config, "seed": 5})
            data = instantiate(config.data)
            data.setup("fit")
            assert isinstance(data, SRDataModule) and len(data.val_dataset) == 3
        else:
            assert len(instantiate(config)) == 3
    else:
        monkeypatch.setenv("STABLESR_DATA", str(tmp_path))
        resolved = OmegaConf.to_container(config, resolve=False)
        assert resolved["_target_"].startswith("sr.data.")
        with pytest.raises((FileNotFoundError, InstantiationException), match=str(tmp_path)):
            data = instantiate(config, degradation=None, seed=5) if "train_dirs" in config else None
            data.setup("fit") if data is not None else instantiate(config)


def test_bundled_heldout_pairs_match_generator(tmp_path):
    from sr.commands.config import compose
    from sr.commands.testset import make_test_pairs

    out = tmp_path / "pairs"
    overrides = [f"hr_dir={ROOT / 'data/samples/heldout'}", f"out_dir={out}", "crop=384", "degradation.scale=4"]
    cfg = compose("testset", overrides)
    written, kept = make_test_pairs(cfg)
    assert kept == 0 and written == len(list((ROOT / "data/samples/heldout_pairs" / "lr").glob("*.png")))
    for side in ("lr", "hr"):
        for bundled in sorted((ROOT / "data/samples/heldout_pairs" / side).glob("*.png")):
            assert torch.equal(read_image(out / side / bundled.name).image, read_image(bundled).image)
    assert read_image(out / "lr" / "camera.png").image.shape == (3, 96, 96)
    stamp = (out / "lr" / "camera.png").stat().st_mtime_ns
    assert make_test_pairs(cfg) == (0, written) and (out / "lr" / "camera.png").stat().st_mtime_ns == stamp  # kept


def skip_without_sources(reason: str) -> None:
    """Skip a test whose photo sources are not installed; under ``make test-samples``, which installs them first
    (``SR_REQUIRE_SAMPLE_SOURCES=1``), fail instead, so there these tests never pass without asserting."""
    if os.environ.get("SR_REQUIRE_SAMPLE_SOURCES") == "1":
        pytest.fail(f"sources missing under make test-samples: {reason}")
    pytest.skip(reason)


def test_bundled_colour_pairs_match_make_samples(tmp_path, monkeypatch):
    script = load_script("make_samples")
    if importlib.util.find_spec("sklearn") is None:
        skip_without_sources(f"the colour set's photos ship with scikit-learn: {script.SKLEARN_INSTALL}")
    monkeypatch.setattr(script, "debian_photos", lambda: {})  # this test needs scikit-learn only
    assert script.main(["--dest", str(tmp_path)]) == 0
    samples = ROOT / "data/samples"
    bundled = sorted(path.relative_to(samples) for path in (samples / "colour_pairs").rglob("*.png"))
    written = sorted(path.relative_to(tmp_path) for path in (tmp_path / "colour_pairs").rglob("*.png"))
    assert bundled == written and len(bundled) == 2 * len(script.COLOUR)
    for relative in bundled:
        assert (tmp_path / relative).read_bytes() == (samples / relative).read_bytes(), relative
    assert read_image(tmp_path / "colour_pairs/hr/flower_leaves.png").image.shape == (3, 256, 256)
    assert read_image(tmp_path / "colour_pairs/lr/flower_leaves.png").image.shape == (3, 64, 64)


def test_bundled_debian_training_photos_match_make_samples(tmp_path, monkeypatch):
    script = load_script("make_samples")
    if script.missing_debian_photos():
        skip_without_sources(f"{len(script.TRAIN_DEBIAN)} training photos ship in Debian: {script.DEBIAN_INSTALL}")
    monkeypatch.setattr(script, "colour_photos", lambda: {})  # this test needs the Debian package only
    assert script.main(["--dest", str(tmp_path)]) == 0
    for stem in script.TRAIN_DEBIAN:
        relative = f"train/{stem}.png"
        assert (tmp_path / relative).read_bytes() == (ROOT / "data/samples" / relative).read_bytes(), relative
    assert read_image(tmp_path / "train/paint_brushes.png").image.shape == (3, 302, 384)  # longer side 384 px


def test_make_samples_without_the_debian_photos_says_what_to_install(tmp_path, monkeypatch, capsys):
    script = load_script("make_samples")
    monkeypatch.setattr(script, "DEBIAN_BACKGROUNDS", tmp_path / "no_backgrounds")
    monkeypatch.setattr(script, "colour_photos", lambda: {})
    assert script.main(["--dest", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip().endswith("apt-get install lomiri-wallpapers-16.04")
    assert (tmp_path / "out/train/astronaut.png").is_file() and not (tmp_path / "out/train/fig_bowl.png").exists()


def test_make_samples_without_sklearn_says_what_to_install(tmp_path, monkeypatch, capsys):
    script = load_script("make_samples")
    monkeypatch.setattr(script, "sklearn_images", lambda: None)
    monkeypatch.setattr(script, "debian_photos", lambda: {})
    assert script.main(["--dest", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip().endswith("pip install scikit-learn==1.9.1")
    assert (tmp_path / "heldout" / "coffee.png").is_file() and not (tmp_path / "colour_pairs").exists()


def test_prepare_datasets_lays_out_and_reports_problems(tmp_path, capsys):
    script = load_script("prepare_datasets")
    downloads, dest = tmp_path / "downloads", tmp_path / "datasets"
    for index in range(3):
        write_png(downloads / "FFHQ" / "images1024x1024" / f"{index:05d}.png", 8, 8, seed=index)
    testset = tmp_path / "staging" / "StableSR_testsets"
    for stem in ("0001", "0002"):
        write_png(testset / "RealSRVal_crop128" / "test_LR" / f"{stem}.png", 4, 4)
        write_png(testset / "RealSRVal_crop128" / "test_HR" / f"{stem}.png", 16, 16)
    with zipfile.ZipFile(downloads / "StableSR_testsets.zip", "w") as archive:
        for path in testset.rglob("*.png"):
            archive.write(path, path.relative_to(testset.parent))
    script.TRAINING_SETS["ffhq"] = script.TrainingSet(
        (script.Source("images1024x1024", 3),), "FFHQ/images1024x1024", ("ffhq_first2.txt", 2)
    )
    assert script.main(["--downloads", str(downloads), "--dest", str(dest), "--sets", "ffhq", "realsr"]) == 0
    meta = (dest / "meta_info" / "ffhq_first2.txt").read_text().split()
    assert [Path(line).name for line in meta] == ["00000.png", "00001.png"]
    assert (dest / "meta_info" / meta[0]).resolve().is_file()
    pairs = PairedImageDataset(str(dest / "StableSR_testsets/RealSRVal_crop128/lq"),
                               str(dest / "StableSR_testsets/RealSRVal_crop128/gt"))
    assert len(pairs) == 2

    (downloads / "FFHQ" / "images1024x1024" / "00002.png").write_bytes(b"broken")
    assert script.main(["--downloads", str(downloads), "--dest", str(dest), "--sets", "ffhq", "div8k"]) == 1
    report = capsys.readouterr().err
    assert "00002.png: corrupt image" in report and "'DIV8K/train_HR' not found" in report


def test_sampler_gives_each_rank_its_own_slice_of_the_epoch():
    order = EpochSeededSampler(9, seed=3).order()
    shards = [list(EpochSeededSampler(9, seed=3, rank=rank, world_size=2)) for rank in range(2)]
    assert [[index for index, _ in shard] for shard in shards] == [order[0:8:2], order[1:8:2]]
    assert len(EpochSeededSampler(9, seed=3, rank=1, world_size=2)) == 4
    sampler = EpochSeededSampler(9, seed=3, rank=1, world_size=2)
    sampler.skip_next(0, 3)  # a resumed rank skips what it consumed of its own slice
    assert list(sampler) == shards[1][3:]
    with pytest.raises(ValueError, match="3 training images cannot be split over 4 ranks"):
        EpochSeededSampler(3, seed=0, rank=0, world_size=4)


def _two_rank_data_worker(rank: int, init_file: str, out_dir: str, train_dir: str) -> None:
    """One of two gloo ranks: 3 batches, a checkpoint of the data state, 2 more; then a fresh module resumed."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    # 4 images over 2 ranks, batch 2: one batch per rank and epoch
    datamodule = make_datamodule(pool_size=4, train_dir=Path(train_dir))
    batches = train_batches(datamodule, 5)
    first = [next(batches) for _ in range(3)]
    state = datamodule.state_dict()  # collective: rank 0 receives both ranks' states
    path = Path(out_dir) / "data_state.pt"
    if rank == 0:
        torch.save(state, path)
    expected = [next(batches), next(batches)]
    dist.barrier()
    resumed = make_datamodule(pool_size=4, train_dir=Path(train_dir))
    resumed.setup("fit")
    resumed.load_state_dict(torch.load(path, weights_only=True))
    actual = list(train_batches(resumed, 2, first_epoch=3))
    torch.save({"first": first, "expected": expected, "actual": actual, "state_on_other_rank": state,
                "degradation_seed": datamodule.generator_for(torch.device("cpu")).initial_seed()},
               Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_draw_distinct_degradations_and_each_resumes_its_own_stream(tmp_path):
    four = four_photos(tmp_path / "four")
    torch.multiprocessing.spawn(_two_rank_data_worker, args=(str(tmp_path / "init"), str(tmp_path), str(four)),
                                nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    assert ranks[1]["state_on_other_rank"] == {"ranks": None}  # only rank 0 holds (and writes) the checkpoint
    assert len(torch.load(tmp_path / "data_state.pt", weights_only=True)["ranks"]) == 2
    for rank in ranks:
        for got, want in zip(rank["actual"], rank["expected"], strict=True):
            assert torch.equal(got["lq"], want["lq"]) and torch.equal(got["gt"], want["gt"])
    # different images per rank in every epoch, and independent degradation streams seeded from (seed, rank)
    for epoch in range(3):
        assert not torch.equal(ranks[0]["first"][epoch]["gt"], ranks[1]["first"][epoch]["gt"])
    assert [rank["degradation_seed"] for rank in ranks] == [derived_seed(5, 0), derived_seed(5, 1)]
    assert derived_seed(5, 0) != derived_seed(5, 1)
