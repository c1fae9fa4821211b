"""The Python API (medlearn.api): presets, model building, and checkpoint round trips per task.

Each round trip trains a real tiny checkpoint with the task's own training entry point on tiny
synthetic data written to disk, loads it through the API, and checks the API's array prediction
against the task's own file-based predict function on the same input (and the geometry it keeps).
"""

from __future__ import annotations

import doctest
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.special import softmax

import medlearn
from medlearn import api
from medlearn.config import load_config
from medlearn.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks run faster on one thread on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------ surface
def test_import_is_lazy_and_reexports_the_api() -> None:
    code = "import sys, medlearn; print('torch' in sys.modules, 'medlearn.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert medlearn.load_mrsi is api.load_mrsi and medlearn.build_model is api.build_model
    assert set(api.__all__) <= set(dir(medlearn))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        medlearn.nope  # noqa: B018


def test_api_docstring_examples_run() -> None:
    from medlearn.itl import predict as itl_predict
    from medlearn.mama.eval import predict as mama_predict
    from medlearn.mrsi import predict as mrsi_predict

    for mod, least in ((api, 5), (mrsi_predict, 3), (itl_predict, 2), (mama_predict, 2)):
        res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert res.attempted >= least and res.failed == 0, mod.__name__


def test_presets_listed_and_bad_names_rejected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert set(api.TASKS) >= {"mrsi", "itl", "mama"}
    for task in api.TASKS:
        names = api.list_presets(task)
        assert names == sorted(p.stem for p in (ROOT / "configs" / task).glob("*.yaml"))
        assert {"paper", "small", "tiny", "demo"} <= set(names)
    with pytest.raises(ConfigError, match="unknown task 'seg'; valid tasks: mrsi, mama, itl"):
        api.build_model("seg")
    with pytest.raises(ConfigError, match="unknown task 'seg'"):
        api.list_presets("seg")
    with pytest.raises(
        ConfigError, match=r"unknown itl preset 'tinyy'; valid presets: demo, paper, small, tiny"
    ):
        api.build_model("itl", "tinyy")
    with pytest.raises(ConfigError, match="model.widht"):
        api.build_model("itl", "tiny", widht=4)
    with pytest.raises(ConfigError, match="does not exist"):
        api.load_preset("mrsi", tmp_path / "missing.yaml")
    (tmp_path / "cfgs" / "itl").mkdir(parents=True)
    (tmp_path / "cfgs" / "itl" / "mine.yaml").write_text("model: {width: 4}\n")
    monkeypatch.setenv("MEDLEARN_CONFIGS", str(tmp_path / "cfgs"))  # its presets first, packaged ones fill in
    assert api.list_presets("itl") == ["demo", "mine", "paper", "small", "tiny"]
    assert api.load_preset("itl", "mine").model.width == 4
    (tmp_path / "cfgs" / "itl" / "tiny.yaml").write_text("model: {width: 5}\n")  # shadows the packaged tiny
    assert api.load_preset("itl", "tiny").model.width == 5
    monkeypatch.setenv("MEDLEARN_CONFIGS", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"preset folder '.*nowhere' not found.*MEDLEARN_CONFIGS"):
        api.list_presets("mrsi")


def test_preset_path_and_overrides_match_load_config(tmp_path: Path) -> None:
    from medlearn.itl.config import ITLConfig

    yaml = tmp_path / "mine.yaml"
    yaml.write_text((ROOT / "configs" / "itl" / "tiny.yaml").read_text())
    cfg = api.load_preset("itl", yaml, ["model.width=4", "data.size=48"])
    ref = load_config(ITLConfig, ROOT / "configs" / "itl" / "tiny.yaml", ["model.width=4", "data.size=48"])
    assert cfg == ref


def test_build_model_shapes_per_task() -> None:
    torch.manual_seed(0)
    gen = api.build_model("mrsi", "tiny", base_width=2, depth=2)
    assert sum(p.numel() for p in gen.parameters()) < sum(
        p.numel() for p in api.build_model("mrsi", "tiny").parameters()
    )
    b, h = 2, 16
    t1 = torch.rand(b, 1, 3 * h, 3 * h, 3)
    out = gen(
        t1, t1, torch.rand(b, 1, h, h), torch.tensor([4, 6]), torch.tensor([0, 6]), torch.zeros(b), None
    )
    assert out.shape == (b, 1, h, h) and torch.isfinite(out).all()

    seg = api.build_model("itl", "tiny", overrides=["data.context=3"], width=4)
    assert seg(torch.zeros(2, 3, 40, 24)).shape == (2, 2, 40, 24)

    mama = api.build_model("mama", "tiny", overrides=["model.heads.embed_dim=16"])
    with torch.no_grad():
        emb = mama.encode_image(torch.randn(3, 3, 32, 32)).numpy()
    assert emb.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


# --------------------------------------------------------------------------------------------- mrsi
@pytest.fixture(scope="module")
def mrsi_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        from tests.mrsi.conftest import write_npy_patients
    except ImportError:  # pragma: no cover - tests collected as plain folders
        from mrsi.conftest import write_npy_patients
    from medlearn.mrsi.config import MRSIConfig
    from medlearn.mrsi.train import train as train_mrsi

    root = tmp_path_factory.mktemp("api_mrsi")
    data = write_npy_patients(root / "npy", n_patients=4)
    cfg = load_config(MRSIConfig, ROOT / "configs" / "mrsi" / "tiny.yaml",
                      [f"data.root={data}", f"train.out={root / 'run'}", "data.metabolites=[NAA,tCho]",
                       "model.base_width=2", "model.depth=2", "critic.n_blocks=2", "adversarial.n_critic=1",
                       "train.epochs=1", "train.batch_size=4"])  # fmt: skip
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_mrsi(cfg)
    finally:
        torch.set_num_threads(before)
    return root / "run"


def _mrsi_case(grid: int = 16, slices: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:grid, 0:grid] / grid
    brain = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.4**2).astype(np.float32)
    lr = np.stack(
        [brain * (1 + np.exp(-((yy - 0.4 - 0.1 * s) ** 2 + (xx - 0.5) ** 2) / 0.02)) for s in range(slices)],
        -1,
    )
    mri = np.repeat(np.repeat(np.repeat(lr, 3, 0), 3, 1), 3, 2) + rng.uniform(
        0, 0.1, (3 * grid, 3 * grid, 3 * slices)
    )
    return lr.astype(np.float32), mri.astype(np.float32), (2.5 - mri).astype(np.float32)


def test_mrsi_round_trip_matches_predict_file(mrsi_run: Path, tmp_path: Path) -> None:
    from medlearn.mrsi.data import mri_affine_from_map_affine
    from medlearn.mrsi.evaluate import load_generator
    from medlearn.mrsi.predict import predict_file

    p = medlearn.load_mrsi(mrsi_run)
    adv = p.config.adversarial  # the trained range is [lambda_low, lambda_low + lambda_span]
    assert isinstance(p, api.MRSIPredictor)
    assert p.sharpness_range == (adv.lambda_low, adv.lambda_low + adv.lambda_span)
    lr, t1, flair = _mrsi_case()
    sr = p.super_resolve(lr, t1, flair, "NAA", lowres_matrix=6, sharpness=0.05)
    assert sr.shape == lr.shape and sr.dtype == np.float32 and np.isfinite(sr).all() and sr.max() > 0
    # the task's own file path: NIfTI in, NIfTI out, generator loaded independently
    affine = np.array([[2.0, 0, 0, -10], [0, 2.5, 0, 5], [0, 0, 3.0, 1], [0, 0, 0, 1]])
    mri_aff = mri_affine_from_map_affine(affine)
    for name, arr, aff in (("NAA", lr, affine), ("T1", t1, mri_aff), ("FLAIR", flair, mri_aff)):
        nib.save(nib.Nifti1Image(arr, aff), str(tmp_path / f"{name}.nii.gz"))
    gen, _ = load_generator(mrsi_run)
    ref = predict_file(gen, tmp_path / "NAA.nii.gz", tmp_path / "T1.nii.gz", tmp_path / "FLAIR.nii.gz",
                       tmp_path / "ref.nii.gz", "NAA", 6, 0.05)  # fmt: skip
    np.testing.assert_allclose(sr, nib.load(str(ref)).get_fdata(), rtol=1e-5, atol=1e-6 * sr.max())
    # the API's file entry point keeps the map's geometry
    out = p.predict_file(tmp_path / "NAA.nii.gz", tmp_path / "T1.nii.gz", tmp_path / "FLAIR.nii.gz",
                         tmp_path / "api.nii.gz", "NAA", 6, 0.05)  # fmt: skip
    img = nib.load(str(out))
    assert img.shape == lr.shape and np.allclose(img.affine, affine)
    np.testing.assert_allclose(img.get_fdata(), sr, rtol=1e-5, atol=1e-6 * sr.max())
    # an acquired 6x6 matrix is first zero-filled in k-space (centred FFT, numpy definition here)
    small = np.random.default_rng(2).uniform(0.5, 1.5, (6, 6, 2)).astype(np.float32)
    big = np.zeros((16, 16, 2), complex)
    big[5:11, 5:11] = np.fft.fftshift(np.fft.fft2(small, axes=(0, 1)), axes=(0, 1))
    filled = np.abs(np.fft.ifft2(np.fft.ifftshift(big, axes=(0, 1)), axes=(0, 1))) * 256 / 36
    np.testing.assert_allclose(
        p.super_resolve(small, t1, flair, "NAA", 6),
        p.super_resolve(filled, t1, flair, "NAA", 6),
        rtol=1e-4,
        atol=1e-5,
    )


def test_mrsi_bad_inputs(mrsi_run: Path) -> None:
    p = api.load_mrsi(mrsi_run)
    lr, t1, flair = _mrsi_case()
    with pytest.raises(DataError, match="even"):
        p.super_resolve(lr, t1, flair, "NAA", lowres_matrix=7)
    with pytest.raises(DataError, match="unknown metabolite 'XYZ'"):
        p.super_resolve(lr, t1, flair, "XYZ", lowres_matrix=6)
    with pytest.raises(DataError, match="matches neither the MRI grid"):
        p.super_resolve(lr[:15], t1, flair, "NAA", lowres_matrix=6)
    with pytest.raises(
        DataError, match=r"flair: FLAIR shape \(45, 48, 6\) differs from T1 \(48, 48, 6\) \(t1\)"
    ):
        p.super_resolve(lr, t1, flair[:-3], "NAA", lowres_matrix=6)
    with pytest.raises(DataError, match="finite"):
        p.super_resolve(np.full_like(lr, np.nan), t1, flair, "NAA", lowres_matrix=6)
    with pytest.raises(DataError, match="does not exist"):
        api.load_mrsi(mrsi_run / "nope")


# ---------------------------------------------------------------------------------------------- itl
@pytest.fixture(scope="module")
def itl_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from medlearn.itl.config import ITLConfig
    from medlearn.itl.synth import make_benchmark
    from medlearn.itl.train import train as train_itl

    root = tmp_path_factory.mktemp("api_itl")
    data = make_benchmark(root / "data", seed=0, scale="tiny", sites=["RUNMC", "HK"])
    cfg = load_config(ITLConfig, ROOT / "configs" / "itl" / "tiny.yaml",
                      [f"data.root={data}", f"train.out={root / 'run'}", "data.sites=[RUNMC]", "train.steps_per_phase=2",
                       "train.largest_cc=false"])  # fmt: skip
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_itl(cfg)
    finally:
        torch.set_num_threads(before)
    return root / "run", data


def test_itl_round_trip_matches_predict_file(itl_run: tuple[Path, Path], tmp_path: Path) -> None:
    from medlearn.itl.predict import load_checkpoint, predict_file

    run, data = itl_run
    seg = medlearn.load_itl(run)
    assert isinstance(seg, api.ITLSegmenter)
    src = nib.load(str(data / "HK" / "Case01.nii.gz"))
    vol = np.asarray(src.dataobj)[:, 2:, :]  # an odd in-plane shape
    affine = src.affine.copy()
    affine[:3, :3] = affine[:3, :3] @ np.array([[0.96, -0.28, 0], [0.28, 0.96, 0], [0, 0, 1]])  # oblique
    nib.save(nib.Nifti1Image(vol, affine), str(tmp_path / "scan.nii.gz"))
    spacing = nib.load(str(tmp_path / "scan.nii.gz")).header.get_zooms()[:3]
    prob = seg.probabilities(vol, spacing)
    mask = seg.segment(vol, spacing)
    assert mask.shape == vol.shape == prob.shape and mask.dtype == np.uint8
    assert prob.std() > 0 and ((prob > 0.5) == (mask == 1)).all()  # largest_cc is off in this run
    np.testing.assert_array_equal(
        api.load_predictor("itl", run).segment(vol, spacing), mask
    )  # the registry's loader
    model, cfg = load_checkpoint(run / "checkpoints" / "final")  # the task's own loader and predictor
    ref = predict_file(model, cfg, tmp_path / "scan.nii.gz", tmp_path / "ref.nii.gz")
    np.testing.assert_array_equal(mask, np.asarray(nib.load(str(ref)).dataobj))
    out = seg.segment_file(tmp_path / "scan.nii.gz", tmp_path / "api" / "mask.nii.gz")
    img = nib.load(str(out))
    assert img.shape == vol.shape and np.allclose(img.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(img.dataobj), mask)


def test_itl_bad_inputs(itl_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = itl_run
    seg = api.load_itl(run)
    with pytest.raises(DataError, match="expected a 3D array"):
        seg.segment(np.zeros((8, 8)), (1, 1, 1))
    with pytest.raises(DataError, match="spacing must be 3 positive"):
        seg.segment(np.zeros((8, 8, 2)), (1, 0, 1))
    with pytest.raises(DataError, match="not an itl checkpoint"):
        api.load_itl(tmp_path)


# --------------------------------------------------------------------------------------------- mama
@pytest.fixture(scope="module")
def mama_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    try:
        from tests.mama.pt_fakes import deterministic_datasets, tiny_config, write_prepared
    except ImportError:  # pragma: no cover - tests collected as plain folders
        from mama.pt_fakes import deterministic_datasets, tiny_config, write_prepared
    from medlearn.mama.train import train

    root = tmp_path_factory.mktemp("api_mama")
    prepared = write_prepared(root, patients=6)
    cfg = tiny_config(
        root, "train.max_steps=2", "loss.late_loss=1", "train.val_every=0", f"data.prepared_dir={prepared}"
    )
    summary = train(cfg, deterministic_datasets(prepared, cfg.model.image.image_size))
    return Path(summary["final"]), root / "synth"


def test_mama_round_trip_matches_the_task_code(mama_run: tuple[Path, Path]) -> None:
    from medlearn.mama.data.report_text import RSNA_PROMPTS
    from medlearn.mama.eval.predict import collect_inputs, predict_files
    from medlearn.mama.modeling.export import load_checkpoint

    ckpt, synth = mama_run
    m = medlearn.load_mama(ckpt)
    assert isinstance(m, api.MamaPredictor) and m.image_size == 32
    model, _ = load_checkpoint(ckpt)  # independent load (export's loader)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = [
        "Findings: negative.",
        "Breast composition: extremely dense. Findings: mass; BI-RADS category 4.",
    ]
    img, txt = m.encode_images(images.numpy()), m.encode_texts(texts)
    with torch.no_grad():
        ref_img = model.encode_image(images).numpy()
        enc = model.tokenizer(texts)
        ref_txt = model.encode_text(enc["input_ids"], enc["attention_mask"]).numpy()
    np.testing.assert_allclose(img, ref_img, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(txt, ref_txt, rtol=1e-5, atol=1e-6)
    assert img.shape == (3, 32) and txt.shape == (2, 32)
    # zero-shot = softmax(scale * cosine), computed here with numpy/scipy
    scale = float(model.heads.logit_scale.detach().clamp(max=model.max_log_scale).exp())
    probs = m.zero_shot(images, texts)
    np.testing.assert_allclose(probs, softmax(scale * ref_img @ ref_txt.T, axis=1), rtol=1e-5, atol=1e-6)
    per_image = m.zero_shot(images, [texts, texts[::-1], texts])
    np.testing.assert_allclose(per_image[1], probs[1, ::-1], rtol=1e-5, atol=1e-6)
    # files: the API's load_images + zero_shot equals `mama predict`'s per-image probabilities
    files = collect_inputs([synth / "rsna" / "train_images"])[:3]
    table, _ = predict_files(files, model, 32, "cancer")
    got = m.zero_shot(m.load_images(files), list(RSNA_PROMPTS))
    np.testing.assert_allclose(got, table[["p_negative", "p_cancer"]].to_numpy(), rtol=1e-4, atol=1e-6)
    # a run folder resolves to its latest checkpoint
    np.testing.assert_allclose(
        api.load_mama(ckpt.parent.parent).encode_images(images), img, rtol=1e-5, atol=1e-6
    )


def test_mama_bad_inputs(mama_run: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, _ = mama_run
    m = api.load_mama(ckpt)
    with pytest.raises(DataError, match=r"expected \(B, 3, 32, 32\)"):
        m.encode_images(np.zeros((2, 32, 32)))
    with pytest.raises(DataError, match="list of strings"):
        m.encode_texts("one string")
    with pytest.raises(DataError, match="one per image"):
        m.zero_shot(np.zeros((2, 3, 32, 32)), [["a.", "b."], ["a."]])
    with pytest.raises(DataError, match="does not exist"):
        api.load_mama(tmp_path / "missing")
    with pytest.raises(DataError, match="file not found"):
        m.load_images([tmp_path / "missing.dcm"])
