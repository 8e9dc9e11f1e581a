"""The coding study ([QSMoE], smoe_core.studies.coding_paper): baseline byte counts are real file sizes, the
BD-rate call is checked against curves of known answer, the claims logic on hand-made tables, and the SMoE grid
item resumes (and keeps decodable .smoe files)."""
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from smoe_core.studies import coding_paper as cp
from smoe_core.studies import common, reproduce
from smoe_core.studies.results import ResultsStore

pytest.importorskip("bjontegaard")


@pytest.fixture(scope="module")
def small():
    return cp.load_original("lena", 64)


# ---------------------------------------------------------------------- images
def test_coding_images_ship_and_are_keyed_by_name(tmp_path):
    assert set(cp.CODING_IMAGES) == set(reproduce.CODING_IMAGES) == set(reproduce.NOTEBOOK_IMAGES["coding"])
    for key, fname in cp.CODING_IMAGES.items():
        p = cp.coding_data_dir() / fname
        assert p.is_file() and Image.open(p).size == (512, 512) and Image.open(p).mode == "RGB"
        assert cp.coding_image_key(p) == key == cp.coding_image_key(key.upper())
    copy = tmp_path / "mine.png"
    copy.write_bytes((cp.coding_data_dir() / "lena.png").read_bytes())
    assert cp.coding_image_key(copy) == "lena"  # a byte-identical copy
    other = tmp_path / "lena.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(other)
    assert cp.coding_image_key(other).startswith("lena-")  # a user's lena.png is not the paper's
    assert cp.load_original("barbara", 32).shape == (32, 32, 3)
    # --images: the coding notebook's names pass by name, a test image stays valid for every notebook
    assert reproduce.notebook_image("lena", reproduce.NOTEBOOK_IMAGES["coding"]) == "lena"
    assert reproduce.notebook_image("peppers", ()) == "peppers"
    with pytest.raises(FileNotFoundError):
        reproduce.notebook_image("lena")
    with pytest.raises(FileNotFoundError, match="--only"):
        reproduce.reproduce("smoke", only=["coding", "r_smoe"], images=["lena"], results_dir=tmp_path)
    params = reproduce.notebook_parameters("coding", "paper", results_dir=tmp_path, images=["baboon"])
    assert params["images"] == ["baboon"]


def test_reference_is_cached_and_used(tmp_path, small, monkeypatch):
    ref = cp.reference_image("lena", 32, cache_dir=tmp_path, full_image=False)
    path = cp.reference_path(tmp_path, "lena", 32, cp.PREFILTER_SIGMA, full_image=False)
    assert path.is_file() and path.name == "lena_bm3d4p7_c32.png"
    assert ref.dtype == np.uint8 and ref.shape == (32, 32, 3)
    assert not np.array_equal(ref, cp.load_original("lena", 32))  # the filter changed it
    monkeypatch.setattr(cp, "prefilter", lambda *a, **k: pytest.fail("the cached reference was not used"))
    assert np.array_equal(cp.reference_image("lena", 32, cache_dir=tmp_path, full_image=False), ref)
    assert np.array_equal(cp.reference_image("lena", 32, sigma=0), cp.load_original("lena", 32))


# ---------------------------------------------------------------------- baselines: bytes are file sizes
@pytest.mark.parametrize("codec_name,param", [("jpeg420", 10), ("jpeg420", 75), ("jpeg444", 50), ("jpeg2000", 0.5),
                                              ("jpeg2000", 2.0)])
def test_baseline_bytes_are_the_real_file_sizes(tmp_path, small, codec_name, param):
    row, data = cp.baseline_point(small, codec_name, param)
    im = Image.fromarray(small)
    if codec_name == "jpeg2000":
        path = tmp_path / "x.jp2"
        im.save(path, irreversible=True, mct=1, quality_mode="rates", quality_layers=[24.0 / param])
    else:
        path = tmp_path / "x.jpg"
        im.save(path, quality=param, subsampling=2 if codec_name == "jpeg420" else 0, optimize=True)
    size = path.stat().st_size
    assert row["bytes"] == len(data) == size
    assert row["bpp"] == pytest.approx(8 * size / (64 * 64))
    assert path.read_bytes() == data
    with Image.open(path) as f:
        assert f.format == ("JPEG2000" if codec_name == "jpeg2000" else "JPEG")
        if codec_name != "jpeg2000":
            from PIL import JpegImagePlugin

            assert JpegImagePlugin.get_sampling(f) == (2 if codec_name == "jpeg420" else 0)
    q = cp.quality(cp.decode_file(data), small)
    assert row["psnr"] == pytest.approx(q["psnr"]) and 0 < row["ssim611"] <= 1


def test_jp2_targets_and_rate_control(small):
    t = cp.jp2_targets([0.5, 1.0, 0.25], extend=1.25)
    assert t == [0.2, 0.25, 0.5, 1.0, 1.25]
    assert cp.jp2_targets([]) == []
    rows = cp.run_baseline_item(dict(image="lena", codec="jpeg2000", params=[1.5, 3.0], crop=64, sigma=0))
    assert [r["bpp"] for r in rows] == pytest.approx([1.5, 3.0], rel=0.1)


# ---------------------------------------------------------------------- BD-rates: known answers
def _curve():
    b = np.array([0.1, 0.2, 0.4, 0.8, 1.6, 3.2])
    return b, 0.6 + 0.05 * np.log2(b / 0.1)  # log-rate linear in quality: every fit below is exact


@pytest.mark.parametrize("method", ["cubic", "pchip"])
def test_bd_rate_of_a_curve_against_itself_is_zero(method):
    b, q = _curve()
    r = cp.bd_rate(b, q, b, q, method)
    assert r["bd_rate_pct"] == pytest.approx(0.0, abs=1e-9) and r["bd_metric"] == pytest.approx(0.0, abs=1e-9)
    assert r["overlap"] == pytest.approx(1.0) and r["note"] == ""


@pytest.mark.parametrize("method", ["cubic", "pchip"])
@pytest.mark.parametrize("factor", [0.6, 0.8, 1.3])
def test_bd_rate_of_a_rate_scaled_curve_is_the_factor(method, factor):
    """The test curve reaches every quality at ``factor`` times the anchor's rate: BD-rate = (factor - 1) x 100%,
    negative when the test (SMoE) saves rate (the argument order of bjontegaard.bd_rate)."""
    b, q = _curve()
    r = cp.bd_rate(b, q, b * factor, q, method)
    assert r["bd_rate_pct"] == pytest.approx((factor - 1) * 100, abs=1e-6)
    assert (r["bd_metric"] > 0) == (factor < 1)
    # extra anchor points far outside the test's quality range do not change it (anchor restricted)
    bx = np.concatenate([[0.02, 0.05], b, [6.4, 12.8]])
    qx = 0.6 + 0.05 * np.log2(bx / 0.1)
    r2 = cp.bd_rate(bx, qx, b[1:-1] * factor, q[1:-1], method)
    assert r2["bd_rate_pct"] == pytest.approx((factor - 1) * 100, abs=1e-6)


def test_bd_rate_fronts_and_too_few_points():
    b, q = _curve()
    nb, nq = np.concatenate([b, [0.3]]), np.concatenate([q, [0.1]])  # a dominated point is dropped
    fb, fq = cp.rd_front(nb, nq)
    assert list(fb) == list(b) and np.all(np.diff(fq) > 0)
    assert cp.bd_rate(nb, nq, b * 0.8, q, "pchip")["bd_rate_pct"] == pytest.approx(-20.0, abs=1e-6)
    r = cp.bd_rate(b, q, b[:3] * 0.8, q[:3], "cubic")
    assert math.isnan(r["bd_rate_pct"]) and "4 points" in r["note"]
    assert cp.bd_rate(b, q, b[:3] * 0.8, q[:3], "pchip")["bd_rate_pct"] == pytest.approx(-20.0, abs=1e-6)
    r = cp.bd_rate(b, q, b, q + 10, "pchip", restrict_anchor=False)
    assert math.isnan(r["bd_rate_pct"]) and "overlap" in r["note"]


# ---------------------------------------------------------------------- claims on hand-made tables
def _points(factors: dict, jp2_factors: dict, ptq_drop: float = 0.02) -> pd.DataFrame:
    """SMoE at rate factor f of JPEG 4:2:0 for every quality; JPEG 2000 likewise; PTQ at ptq_drop lower SSIM."""
    b, q = _curve()
    rows = []
    for image, f in factors.items():
        for bi, qi in zip(b, q):
            rows.append(dict(image=image, codec="jpeg420", bpp=bi, ssim611=qi, psnr=30 + 10 * qi))
            rows.append(dict(image=image, codec="jpeg2000", bpp=bi * jp2_factors[image], ssim611=qi, psnr=30 + 10 * qi))
            rows.append(dict(image=image, codec="smoe", bpp=bi * f, ssim611=qi, psnr=30 + 10 * qi))
    return pd.DataFrame(rows)


def _ablation(points, drop):
    s = points[points["codec"] == "smoe"]
    runs = pd.concat([s.assign(training="qat"), s.assign(training="ptq", ssim611=s["ssim611"] - drop,
                                                       psnr=s["psnr"] - 10 * drop)])
    runs = runs.assign(point=[f"step {i % 6}" for i in range(len(runs))], kernels=100, ssim611_unquantized=0.9,
                       psnr_unquantized=30.0)
    return cp.ablation_table(runs)


def test_claims_hold_on_a_table_made_to_hold():
    factors = {"lena": 0.55, "barbara": 0.7, "peppers": 0.8, "baboon": 1.2}
    jp2 = {"lena": 0.52, "barbara": 0.5, "peppers": 0.76, "baboon": 0.5}  # SMoE needs +5.8% (lena), +5.3% of JP2
    pts = _points(factors, jp2)
    bd = cp.bd_table(pts, anchors=("jpeg420", "jpeg2000"))
    sel = bd[(bd["anchor"] == "jpeg420") & (bd["metric"] == "ssim611")]
    assert np.allclose(sel["savings_pct"], [(1 - f) * 100 for f in factors.values() for _ in (0, 1)])
    # barbara at 1.12 bpp: JPEG 2000's SSIM at the same rate is higher (it needs 0.5 / 0.7 of the rate)
    claims = cp.claims_table(bd, pts, _ablation(pts, 0.02), mid_bpp=0.5, competitive_pct=10.0)
    by = {(r["claim"].split()[0], r["image"]): r for _, r in claims.iterrows()}
    assert by[("savings", "all")]["value"] == pytest.approx(45.0) and by[("savings", "all")]["holds"] == True  # noqa: E712
    for image in factors:
        assert by[("better", image)]["holds"] == True, image  # noqa: E712
    assert by[("Barbara", "barbara")]["holds"] == True  # noqa: E712 (both Barbara claims hold)
    comp = claims[claims["claim"].str.startswith("competitive")].set_index("image")
    assert comp.loc["lena", "value"] == pytest.approx(100 * (0.55 / 0.52 - 1)) and comp.loc["lena", "holds"] == True  # noqa: E712
    assert comp.loc["peppers", "value"] == pytest.approx(100 * (0.8 / 0.76 - 1)) and comp.loc["peppers", "holds"] == True  # noqa: E712
    barbara = claims[claims["image"] == "barbara"].set_index("claim")
    assert barbara.loc["Barbara ~1.12 bpp: JPEG 2000 SSIM above SMoE's", "holds"] == True  # noqa: E712
    qat = claims[claims["claim"].str.startswith("quantization")]
    assert len(qat) == 4 and (qat["holds"] == True).all() and np.allclose(qat["value"], 0.02)  # noqa: E712
    assert "holds" in cp.claims_markdown(claims) and "fails" not in cp.claims_markdown(claims)


def test_claims_fail_on_a_table_made_to_fail():
    factors = {"lena": 0.75, "barbara": 0.9, "peppers": 1.1, "baboon": 0.9}
    jp2 = {"lena": 0.5, "barbara": 1.0, "peppers": 0.5, "baboon": 0.5}
    pts = _points(factors, jp2)
    # one Barbara point below JPEG at its rate: the "every rate" claim fails there
    i = pts.index[(pts["image"] == "barbara") & (pts["codec"] == "smoe")][2]
    pts.loc[i, "ssim611"] -= 0.01  # SMoE was 0.05 log2(1 / 0.9) = 0.0076 above JPEG at its rate
    bd = cp.bd_table(pts, anchors=("jpeg420", "jpeg2000"))
    claims = cp.claims_table(bd, pts, _ablation(pts, -0.01), savings_tolerance_pp=5.0)
    by = claims.set_index(["claim", "image"])["holds"]
    assert by[("savings up to 42.48% over JPEG (SSIM-611 BD-rate)", "all")] == False  # noqa: E712 (25% < 42.48 - 5)
    better = claims[claims["claim"].str.startswith("better")].set_index("image")["holds"]
    assert better.to_dict() == {"lena": True, "barbara": True, "peppers": False, "baboon": False}
    assert by[("Barbara better than JPEG at every rate", "barbara")] == False  # noqa: E712
    comp = claims[claims["claim"].str.startswith("competitive")].set_index("image")
    assert comp.loc["lena", "value"] == pytest.approx(50.0) and comp.loc["lena", "holds"] == False  # noqa: E712
    assert by[("Barbara ~1.12 bpp: JPEG 2000 SSIM above SMoE's", "barbara")] == False  # noqa: E712 (SMoE is cheaper there)
    qat = claims[claims["claim"].str.startswith("quantization")]
    assert (qat["holds"] == False).all()  # noqa: E712
    # "up to" is over the paper's four images: a maximum below it with an image missing is undecided, not
    # failed, and one image above it holds whatever is missing
    three = cp.claims_table(bd[bd["image"] != "peppers"], pts[pts["image"] != "peppers"])
    row = three.set_index(["claim", "image"]).loc[("savings up to 42.48% over JPEG (SSIM-611 BD-rate)", "all")]
    assert row["holds"] is None and row["value"] == pytest.approx(25.0) and "not yet measured: peppers" in row["ours"]
    high = _points({"lena": 0.55}, {"lena": 0.5})
    one = cp.claims_table(cp.bd_table(high, anchors=("jpeg420",)), high)
    assert one.set_index("claim").loc["savings up to 42.48% over JPEG (SSIM-611 BD-rate)", "holds"] == True  # noqa: E712
    # without curves the claims are undecided, not failed
    empty = cp.claims_table(bd.iloc[0:0], pts.iloc[0:0])
    assert len(empty) == 1 and empty["holds"].isna().all()


def test_wins_table_and_findings_on_hand_made_tables():
    """SMoE at a constant rate factor f of JPEG's curve (quality linear in log-rate, slope 0.05 per doubling)
    is 0.05 log2(1 / f) above JPEG at every rate both cover."""
    pts = _points({"lena": 0.55, "baboon": 1.2}, {"lena": 0.5, "baboon": 0.5})
    bd = cp.bd_table(pts, anchors=("jpeg420",))
    w = cp.wins_table(pts, bd, anchors=("jpeg420",)).set_index("image")
    b, _ = _curve()
    lena, baboon = w.loc["lena"], w.loc["baboon"]
    assert lena["points_compared"] == int((b * 0.55 >= b.min()).sum()) == lena["test_above"] == 5
    assert lena["bpp_above"] == "0.11-1.76" and lena["bd_rate_pct"] == pytest.approx(-45.0)
    assert lena["largest_gain"] == pytest.approx(0.05 * math.log2(1 / 0.55), abs=1e-9)
    assert lena["mean_difference"] == pytest.approx(0.05 * math.log2(1 / 0.55), abs=1e-9)
    assert baboon["points_compared"] == int((b * 1.2 <= b.max()).sum()) == 5 and baboon["test_above"] == 0
    assert baboon["bpp_above"] == "" and baboon["largest_gain"] == pytest.approx(0.05 * math.log2(1 / 1.2), abs=1e-9)
    assert lena["anchor"] == "JPEG 4:2:0"
    claims = cp.claims_table(cp.bd_table(pts, anchors=("jpeg420", "jpeg2000")), pts, _ablation(pts, 0.02))
    text = cp.findings(pts, claims, _ablation(pts, 0.02), crop=128, grid_kernels=1024)
    assert "not the paper's experiment" in text and "1024 kernels" in text
    n_hold = int((claims["holds"] == True).sum())  # noqa: E712
    assert f"**Claims that hold** ({n_hold} of {len(claims)})" in text
    assert "lena +0.0200 on average" in text  # the QAT-PTQ gap the ablation was made with
    assert "not the paper's experiment" not in cp.findings(pts, claims, crop=None)
    rd = cp.smoe_rd_table(pd.DataFrame(dict(image=["lena", "lena"], training=["qat", "ptq"], point=["final"] * 2,
                                            kernels=[10, 10], bytes=[70, 80], bpp=[0.5, 0.6], psnr=[20.0, 19.0],
                                            ssim611=[0.8, 0.7])))
    assert len(rd) == 1 and rd.loc[0, "bits_per_kernel"] == pytest.approx(56.0)


# ---------------------------------------------------------------------- the SMoE grid item resumes
SMOKE_OVERRIDES = dict(sparsify_steps=5, x_range=[0.3, 1.5], sparsify_pi_rate=0.05, pretrain_iters=10)


def test_smoe_item_rows_files_and_resume(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path, "coding", "smoke")
    items = cp.smoe_items(["lena"], ["qat"], crop=32, sigma=0, out_dir=tmp_path / "files", preset="smoke",
                          snapshots=[1, 2, 3], overrides=SMOKE_OVERRIDES)
    df = common.run_items("smoe_points", items, cp.run_smoe_item, cp.SMOE_KEYS, store, progress=False)
    assert len(df) >= 2 and (df["image"] == "lena").all() and (df["training"] == "qat").all()
    assert list(df["step"]) == sorted(df["step"]) and df["kernels"].is_monotonic_decreasing
    ref = cp.reference_image("lena", 32, sigma=0)
    for _, r in df.iterrows():
        path = tmp_path / "files" / r["file"]
        assert path.stat().st_size == r["bytes"] and r["bpp"] == pytest.approx(8 * r["bytes"] / 32**2)
        decoded, model = cp.load_smoe_point(tmp_path / "files", "lena", "qat", r["point"])
        assert model.n_kernels == r["kernels"]
        assert cp.quality(decoded, ref)["ssim611"] == pytest.approx(r["ssim611"], abs=1e-9)
    # the training wrote a resumable state while it ran and removed it once its rows were made
    resume = cp.resume_path(tmp_path / "files", "lena", "qat")
    assert resume.parent.is_dir() and not resume.exists()
    assert (df["seconds"] > 0).all() and (df["cpu_seconds"] > 0).all()
    # a rerun computes nothing and returns the same rows
    monkeypatch.setattr(cp, "run_smoe_item", lambda item: pytest.fail("a finished item ran again"))
    again = common.run_items("smoe_points", items, cp.run_smoe_item, cp.SMOE_KEYS, store, progress=False)
    pd.testing.assert_frame_equal(again, df)
    assert len(store.table("smoe_points")) == len(df)
    # every row records its settings; a changed schedule refuses to reuse them (the key is image and training)
    assert (df["settings"] == items[0]["settings"]).all()
    cp.check_smoe_rows(store.table("smoe_points"), items)  # the same settings: fine
    changed = cp.smoe_items(["lena"], ["qat"], crop=32, sigma=0, out_dir=tmp_path / "files", preset="smoke",
                            snapshots=[1, 2, 3], overrides=dict(SMOKE_OVERRIDES, pretrain_iters=11))
    with pytest.raises(ValueError, match=r"lena \(qat\) made with other settings"):
        cp.check_smoe_rows(store.table("smoe_points"), changed)
    cp.check_smoe_rows(store.table("smoe_points").drop(columns="settings"), changed)  # older rows: unchecked
    # the tables that follow: points, figure-free pieces
    pts = cp.points_table(df, pd.DataFrame())
    assert set(pts["codec"]) == {"smoe"} and len(pts) == len(df)
    cov = cp.points_in_range(df, 0.0, 100.0)
    assert cov.loc[0, "points_in_range"] == len(df)


def test_item_settings_fingerprint_what_decides_the_points():
    base = cp.smoe_items(["lena"], ["qat", "ptq"], crop=32, out_dir="/a", threads=1)
    assert base[0]["settings"] == base[1]["settings"] and len(base[0]["settings"]) == 12
    # where files go and the thread count do not change it; the crop, the schedule and its overrides do
    assert cp.smoe_items(["lena"], ["qat"], crop=32, out_dir="/b", cache_dir="/c", threads=2)[0]["settings"] == \
        base[0]["settings"]
    for kw in (dict(crop=48), dict(crop=32, preset="paper"), dict(crop=32, overrides={"pretrain_iters": 5}),
               dict(crop=32, snapshot_kernel_fractions=[0.5]), dict(crop=32, sigma=0)):
        assert cp.smoe_items(["lena"], ["qat"], **kw)[0]["settings"] != base[0]["settings"], kw


def test_snapshot_targets_and_geometric_fractions_by_hand():
    assert cp.geometric_fractions(0.8, 0.1, 4) == [0.8, 0.4, 0.2, 0.1]
    # 0.6 x 1024 = 614.4, 0.3 x 1024 = 307.2, 0.031 x 1024 = 31.7, 0.03 x 1024 = 30.7: the last is not above the stop
    assert cp.snapshot_targets([0.3, 0.6, 0.031, 0.03, 0.6], 1024, 31) == [614, 307, 32]
    assert cp.snapshot_targets([0.001], 100) == [1] and cp.snapshot_targets([], 100) == []
    for bad in ([0.0], [1.5], [-0.1], ["0.5"], [True], 0.5):
        with pytest.raises(ValueError, match="fractions"):
            cp.snapshot_targets(bad, 1024)
    with pytest.raises(ValueError, match="grid_kernels"):
        cp.snapshot_targets([0.5], 0)
    with pytest.raises(ValueError, match="count"):
        cp.geometric_fractions(0.6, 0.1, 1)
    with pytest.raises(ValueError, match="low must be below high"):
        cp.geometric_fractions(0.1, 0.6, 3)
    with pytest.raises(ValueError, match="snapshot_kernel_fractions"):
        cp.smoe_items(["lena"], ["qat"], snapshot_kernel_fractions=[2.0])


def test_max_gate_map_is_the_largest_gate():
    from smoe_core.model import SMoE

    m = SMoE(np.array([[3.0, 3.0], [12.0, 4.0]], np.float32), np.array([[0.5, 0, 0.5], [0.3, 0.1, 0.3]], np.float32),
             np.array([1.0, 0.5], np.float32), np.array([[0.2, 0.5, 0.5], [0.8, 0.5, 0.5]], np.float32),
             image_shape=(8, 16), color_space="yuv")
    lab = cp.max_gate_map(m, chunk=7)
    ys, xs = np.mgrid[0:8, 0:16]
    P = m.precision()
    score = []
    for k in range(2):
        d = np.stack([xs - m.mu[k, 0], ys - m.mu[k, 1]], -1)
        score.append(np.log(m.pi[k]) - 0.5 * np.einsum("...i,ij,...j->...", d, P[k], d))
    assert np.array_equal(lab, np.argmax(np.stack(score), 0))


def test_presets():
    from smoe_core.tasks.coding.schedule import sparsity_schedule

    presets = reproduce.PRESETS["coding"]
    assert set(presets) == {"smoke", "quick", "paper"}
    assert presets["quick"]["images"] == presets["paper"]["images"] == list(cp.CODING_IMAGES)
    paper = presets["paper"]
    assert paper["schedule"] == "paper" and paper["crop"] is None and paper["prefilter_full_image"]
    # the paper preset continues the paper's x ramp: its first 50 lambdas are the paper's
    kw = cp.smoe_schedule("paper", (512, 512), overrides=paper["schedule_overrides"])
    lam = sparsity_schedule((128, 128), kw["sparsify_steps"], kw["x_range"])
    assert np.allclose(lam[:50], sparsity_schedule((128, 128), 50, (0.1, 15.0)), rtol=1e-12)
    assert kw["sparsify_iters"] == 1000 and kw["pretrain_iters"] == 10_000 and kw["target_kernels"] == 492
    assert reproduce.CODING_SNAPSHOT_FRACTIONS == cp.geometric_fractions(0.6, 0.035, 10)


def notebook_defaults(name):
    """The parameters cell of a notebook, evaluated: what papermill runs with where a preset says nothing."""
    import json

    nb = json.loads((reproduce.notebook_dir() / f"{name}.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    scope = {}
    exec("".join(cell["source"]), scope)
    return {k: v for k, v in scope.items() if not k.startswith("__")}


RATE_POINT_PARAMETERS = ("schedule", "schedule_overrides", "snapshots", "snapshot_kernel_fractions",
                         "min_kernel_fraction")


@pytest.mark.parametrize("preset", ["smoke", "quick", "paper"])
def test_every_coding_preset_sets_its_rate_points(preset):
    """The notebook's defaults are the paper preset's; a preset that leaves a rate-point parameter out runs with
    the paper's value (the quick preset once ran the paper's x ramp, up to 18.2, and kept 11 kernels of 1024)."""
    defaults = notebook_defaults("coding")
    p = reproduce.PRESETS["coding"][preset]
    assert set(RATE_POINT_PARAMETERS) <= set(p) <= set(defaults) | {"grid_workers"}
    assert defaults["snapshot_kernel_fractions"] == reproduce.CODING_SNAPSHOT_FRACTIONS
    assert {k: defaults[k] for k in RATE_POINT_PARAMETERS} == {k: reproduce.PRESETS["coding"]["paper"][k]
                                                               for k in RATE_POINT_PARAMETERS}
    run = dict(defaults, **reproduce.notebook_parameters("coding", preset, results_dir="r"))
    kw = cp.smoe_schedule(run["schedule"], (run["crop"] or 512,) * 2, min_kernel_fraction=run["min_kernel_fraction"],
                          overrides=run["schedule_overrides"])
    if preset == "quick":  # the codec's quick schedule (longer pre- and fine-tuning), nothing of the paper's x ramp
        from smoe_core.tasks.coding.codec import PRESETS

        assert kw == dict(PRESETS["quick"], pretrain_iters=3000, finetune_iters=500, prune_every=10, target_kernels=31)
        assert run["snapshot_kernel_fractions"] == reproduce.CODING_SNAPSHOT_FRACTIONS and run["snapshots"] == []
        targets = cp.snapshot_targets(run["snapshot_kernel_fractions"], 1024, kw["target_kernels"])
        assert targets == [614, 448, 327, 238, 174, 127, 92, 67, 49, 36]
