"""maskray serve: every API endpoint, bad requests, the placement rules, the queue, downloads and saving."""

from __future__ import annotations

import gzip
import io
import json
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TOY_LABELS, make_toy_dataset
from maskray.data.dataset import Dataset
from maskray.data.schema import DatasetInfo, write_dataset_info
from maskray.errors import MaskrayError

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from maskray.serve.app import create_app  # noqa: E402
from maskray.serve.server import ServeConfig, is_loopback, open_service  # noqa: E402
from maskray.serve.workspace import Nodule  # noqa: E402

SPACING = 3.0  # mm per pixel: the toy lungs are about 29 mm wide, room for nodules of 5..20 mm
LUNG = {"y": 16, "x": 22}  # the centre of the toy right lung (no nodule there in any case)
TINY = dict(image_size=32, batch_size=4, block_out_channels=(8, 16), norm_num_groups=4, validation_cases=2,
            validation_sampler_steps=2, precision="no", checkpoint_every=100, warmup_steps=1, ema_decay=0.0)
_CACHE: dict[str, tuple] = {}


def tiny_served(factory) -> tuple:
    """``(dataset, stage-2 run)``: a 32 px toy data set with spacing and a ControlNet trained a few steps."""
    if "run" not in _CACHE:
        from maskray.training.config import TrainConfig
        from maskray.training.trainer import train

        root = factory.mktemp("serve")
        ds = make_toy_dataset(root / "toy", n=4)
        write_dataset_info(ds, DatasetInfo(labels=dict(TOY_LABELS), spacing=(SPACING, SPACING)), 4)
        train(TrainConfig(data=str(ds), out=str(root / "base"), steps=4, **TINY), "base", progress=False)
        train(TrainConfig(data=str(ds), out=str(root / "cn"), base=str(root / "base"), steps=4, **TINY),
              "controlnet", progress=False)
        _CACHE["run"] = (ds, root / "cn")
    return _CACHE["run"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return tiny_served(tmp_path_factory)


@pytest.fixture
def client(served, tmp_path):
    ds, run = served
    service = open_service(ServeConfig(model=str(run), data=str(ds), out=str(tmp_path / "out"), max_queue=1))
    with TestClient(create_app(service)) as c:
        c.service = service
        yield c
    service.close()


def png(content: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(content))
    im.load()
    return im


def run_job(c, **body) -> dict:
    r = c.post("/api/generate", json={"case_id": "case001", "steps": 3, **body})
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    for _ in range(600):
        s = c.get(f"/api/jobs/{job}").json()
        if s["state"] in ("done", "failed"):
            return s
        time.sleep(0.05)
    raise AssertionError("generation did not finish in 30 s")


def nodule(d=10.0, **where):
    return {**LUNG, "diameter_mm": d, **where}


# ------------------------------------------------------------------------------------------ page and cases
def test_page_and_static_files_are_served_locally(client):
    page = client.get("/")
    assert page.status_code == 200 and "maskray serve" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    for name in ("app.js", "style.css"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and "https://" not in r.text
    assert client.get("/static/../engine.py").status_code == 404


def test_info_and_case_search(client):
    info = client.get("/api/info").json()
    assert info["image_size"] == 32 and info["cases"] == 4 and info["spacing_mm"] == [SPACING, SPACING]
    assert "dpm++" in info["schedulers"] and info["limits"]["seeds"] == 8 and info["can_save"] is True
    assert info["defaults"]["guidance_scale"] == 1.0  # a pixel model asks for no guidance
    assert "path" not in json.dumps(info) and "/" not in json.dumps(info["model"])
    assert client.get("/api/cases").json()["ids"] == ["case000", "case001", "case002", "case003"]
    assert client.get("/api/cases?q=E002").json() == {"total": 1, "offset": 0, "ids": ["case002"]}
    assert client.get("/api/cases?offset=3&limit=5").json()["ids"] == ["case003"]
    for bad in ("limit=0", "limit=201", "offset=-1", "q=" + "x" * 201):
        r = client.get(f"/api/cases?{bad}")
        assert r.status_code == 422 and r.json()["detail"], bad
    meta = client.get("/api/cases/case000").json()
    assert meta == {"id": "case000", "height": 32, "width": 32, "has_image": True, "nodules": 1, "inpaint": True}


def test_case_pictures(client):
    img = png(client.get("/api/cases/case001/image.png").content)
    assert img.size == (32, 32) and img.mode == "L"
    mask = np.asarray(png(client.get("/api/cases/case000/mask.png").content))
    assert mask.shape == (32, 32, 3) and (mask == [240, 60, 60]).all(-1).any()  # the nodule in red
    assert client.get("/api/cases/case000/other.png").status_code == 422


@pytest.mark.parametrize("case_id", ["nope", "..", "dataset.json", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd",
                                     "imagesTr%2Fcase001_0000.png", "case001%00"])
def test_unknown_and_path_like_case_ids_are_refused(client, case_id):
    for path in (f"/api/cases/{case_id}", f"/api/cases/{case_id}/image.png"):
        r = client.get(path)
        assert r.status_code in (404, 422), (path, r.status_code)  # 422: a slash made it another route's value
        assert r.headers["content-type"] == "application/json" and "root:" not in r.text and "labels" not in r.text
    raw = case_id.replace("%2F", "/").replace("%00", "\0")
    r = client.post("/api/mask", json={"case_id": raw, "nodules": []})
    assert r.status_code == 404 and "no case" in r.json()["detail"]


def test_too_long_case_id_is_a_bad_request(client):
    r = client.post("/api/mask", json={"case_id": "c" * 201})
    assert r.status_code == 422 and r.json()["detail"].startswith("case_id:")


# ------------------------------------------------------------------------------------------ placement
def test_a_nodule_is_painted_by_the_rules_of_maskray_masks(client):
    before = np.asarray(png(client.get("/api/cases/case001/mask.png").content))
    r = client.post("/api/mask", json={"case_id": "case001", "nodules": [nodule(10)]})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    after = np.asarray(png(r.content))
    red = (after == [240, 60, 60]).all(-1)
    assert red[LUNG["y"], LUNG["x"]] and not (before == [240, 60, 60]).all(-1).any()
    # a 10 mm disc at 3 mm per pixel: about pi * (5/3)^2 = 8.7 pixels, all of them where the lung was
    assert 5 <= red.sum() <= 13
    assert (before[red] == before[LUNG["y"], LUNG["x"]]).all()
    label, records = client.service.workspace.place("case001", [Nodule(16, 22, 10.0)])
    assert records[0]["centre_mm"] == [48.0, 66.0] and records[0]["area_px"] == red.sum() == (label == 2).sum()


@pytest.mark.parametrize("nodules, index, words", [
    ([nodule(10, y=2, x=2)], 0, "outside the lung field"),
    ([nodule(30)], 0, "does not fit"),
    ([nodule(10), nodule(10, x=21)], 1, "from every other nodule"),
    ([nodule(10, y=40)], 0, "outside the 32 x 32 px image"),
    ([nodule(4.0)], 0, "outside 5..35 mm"),
    ([nodule(40.0)], 0, "outside 5..35 mm"),
])
def test_impossible_nodules_are_refused_with_the_reason(client, nodules, index, words):
    r = client.post("/api/mask", json={"case_id": "case001", "nodules": nodules})
    assert r.status_code == 422 and r.json()["nodule"] == index and words in r.json()["detail"]


@pytest.mark.parametrize("nodules, words", [
    ([{"y": -1, "x": 3, "diameter_mm": 10}], "greater than or equal to 0"),
    ([{"y": 1, "x": 3, "diameter_mm": 0}], "greater than 0"),
    ([{"y": 1, "x": 3}], "Field required"),
    ([{"y": "a", "x": 3, "diameter_mm": 10}], "valid integer"),
    ([{"y": 1, "x": 3, "diameter_mm": 10, "path": "/etc"}], "Extra inputs"),
    ([nodule(10)] * 9, "at most 8"),
])
def test_malformed_nodules_are_bad_requests(client, nodules, words):
    r = client.post("/api/mask", json={"case_id": "case001", "nodules": nodules})
    assert r.status_code == 422 and words in r.json()["detail"], r.text
    assert "\n" not in r.json()["detail"]


# ------------------------------------------------------------------------------------------ generation
def test_generate_new_images_one_per_seed(client):
    s = run_job(client, nodules=[nodule(10)], seeds=[3, 4], steps=4)
    assert s["state"] == "done" and s["images"] == 2 and s["done"] == s["total"] == 2 * 4 and s["seeds"] == [3, 4]
    job = s["job"]
    a = np.asarray(png(client.get(f"/api/jobs/{job}/0/view/image.png").content), dtype=int)
    b = np.asarray(png(client.get(f"/api/jobs/{job}/1/view/image.png").content), dtype=int)
    assert a.shape == (32, 32) and np.abs(a - b).max() > 10  # the seed changes the picture
    again = run_job(client, nodules=[nodule(10)], seeds=[4], steps=4)
    c = np.asarray(png(client.get(f"/api/jobs/{again['job']}/0/view/image.png").content), dtype=int)
    assert np.array_equal(b, c)  # and a seed gives the same picture again
    for what in ("real", "mask", "diff"):
        assert png(client.get(f"/api/jobs/{job}/1/view/{what}.png").content).size == (32, 32)


def test_the_new_image_follows_the_mask(served):
    """The same seed with and without the nodule gives different pictures (the mask is an input)."""
    from maskray.serve.engine import Engine, Request

    ds, run = served
    engine = Engine(run, Dataset(ds))
    lab = Dataset(ds).label("case001")
    with_nodule = lab.clone()
    with_nodule[14:19, 20:25] = 2
    a = engine.generate(Request(lab, (7,), steps=3))
    b = engine.generate(Request(with_nodule, (7,), steps=3))
    assert a.shape == (1, 1, 32, 32) and not torch.equal(a, b)


def test_inserting_a_nodule_changes_only_its_region(client):
    real = np.asarray(png(client.get("/api/cases/case001/image.png").content), dtype=int)
    s = run_job(client, nodules=[nodule(10)], mode="inpaint", seeds=[1])
    out = np.asarray(png(client.get(f"/api/jobs/{s['job']}/0/view/image.png").content), dtype=int)
    far = np.ones_like(real, dtype=bool)
    far[8:25, 14:31] = False  # the nodule, its 4-pixel margin and more
    assert np.array_equal(out[far], real[far]) and not np.array_equal(out[~far], real[~far])
    diff = np.asarray(png(client.get(f"/api/jobs/{s['job']}/0/view/diff.png").content))
    assert (diff[far] == diff[0, 0]).all() and (diff[~far] != diff[0, 0]).any()
    unchanged = run_job(client, nodules=[], mode="inpaint", seeds=[1])  # no edit: the real image comes back
    same = np.asarray(png(client.get(f"/api/jobs/{unchanged['job']}/0/view/image.png").content), dtype=int)
    assert np.array_equal(same, real)


@pytest.mark.parametrize("body, code, words", [
    ({"steps": 0}, 422, "steps"), ({"steps": 201}, 422, "steps"),
    ({"guidance_scale": -1}, 422, "guidance_scale"), ({"guidance_scale": 21}, 422, "guidance_scale"),
    ({"seeds": []}, 422, "seeds"), ({"seeds": list(range(9))}, 422, "at most 8"), ({"seeds": [-1]}, 422, "seeds.0"),
    ({"seeds": [2**63]}, 422, "seeds.0"), ({"mode": "paint"}, 422, "mode"),
    ({"scheduler": "plms"}, 400, "unknown scheduler"), ({"case_id": "../toy"}, 404, "no case"),
    ({"nodules": [nodule(10, y=1, x=1)]}, 422, "outside the lung field"),
])
def test_bad_generation_requests(client, body, code, words):
    r = client.post("/api/generate", json={"case_id": "case001", **body})
    assert r.status_code == code and words in r.json()["detail"], r.text


def test_unknown_jobs_images_and_files(client):
    s = run_job(client, seeds=[0])
    job = s["job"]
    assert client.get("/api/jobs/0123456789abcdef").status_code == 404
    assert client.get("/api/jobs/..%2F..%2Fetc").status_code == 404
    assert client.get(f"/api/jobs/{job}/1/view/image.png").status_code == 400  # one image only
    assert client.get(f"/api/jobs/{job}/8/view/image.png").status_code == 422
    assert client.get(f"/api/jobs/{job}/0/view/secret.png").status_code == 400
    r = client.get(f"/api/jobs/{job}/0/download/..%2Fdataset.json")
    assert r.status_code == 404 or "unknown download" in r.json()["detail"]
    assert "unknown download" in client.get(f"/api/jobs/{job}/0/download/image.jpg").json()["detail"]


# ------------------------------------------------------------------------------------------ downloads
def test_downloads_are_marked_synthetic_and_carry_no_source(client, served):
    import nibabel as nib
    import pydicom

    s = run_job(client, nodules=[nodule(10)], seeds=[5])
    base = f"/api/jobs/{s['job']}/0/download"
    files = {name: client.get(f"{base}/{name}") for name in
             ("image.png", "mask.png", "image.nii.gz", "mask.nii.gz", "image.dcm")}
    for name, r in files.items():
        assert r.status_code == 200, name
        disposition = r.headers["content-disposition"]
        assert f"maskray-synthetic-{s['job']}-0" in disposition and "case" not in disposition.lower()
        for secret in (b"case001", b"case0", str(served[0]).encode(), str(served[1]).encode(), b"toy"):
            assert secret not in r.content, (name, secret)
    img = png(files["image.png"].content)
    assert img.size == (32, 32) and "synthetic" in img.text["Comment"] and "seed 5" in img.text["Description"]
    assert set(np.unique(np.asarray(png(files["mask.png"].content)))) == {0, 1, 2}
    dcm = pydicom.dcmread(io.BytesIO(files["image.dcm"].content))
    assert dcm.SyntheticData == "YES" and str(dcm.PatientName).startswith("SYNTHETIC") and dcm.Rows == 32
    assert np.array_equal(dcm.pixel_array, np.asarray(img))
    assert float(dcm.PixelSpacing[0]) == pytest.approx(SPACING)
    nii = nib.Nifti1Image.from_bytes(gzip.decompress(files["image.nii.gz"].content))
    assert nii.shape == (32, 32, 1) and b"synthetic" in nii.header["descrip"].tobytes()


# ------------------------------------------------------------------------------------------ queue
def test_a_second_generation_waits_and_a_third_is_refused(client):
    gate, started = threading.Event(), threading.Event()
    real_generate = client.service.engine.generate

    def held(req, progress=None):
        started.set()
        assert gate.wait(30)
        return real_generate(req, progress)

    client.service.engine.generate = held
    body = {"case_id": "case001", "steps": 2}
    first = client.post("/api/generate", json=body).json()
    assert started.wait(30)
    second = client.post("/api/generate", json=body)
    assert second.status_code == 202 and second.json()["position"] == 1
    assert client.get(f"/api/jobs/{second.json()['job']}").json()["state"] == "queued"
    third = client.post("/api/generate", json=body)
    assert third.status_code == 429 and "busy" in third.json()["detail"] and third.headers["retry-after"]
    gate.set()
    for job in (first["job"], second.json()["job"]):
        for _ in range(600):
            if client.get(f"/api/jobs/{job}").json()["state"] == "done":
                break
            time.sleep(0.05)
        assert client.get(f"/api/jobs/{job}").json()["state"] == "done"


def test_a_failing_generation_is_reported_and_the_queue_goes_on(client, capsys):
    real_generate = client.service.engine.generate
    client.service.engine.generate = lambda req, progress=None: 1 / 0
    s = run_job(client)
    assert s["state"] == "failed" and "ZeroDivisionError" in s["error"]
    assert "ZeroDivisionError" in capsys.readouterr().err  # the traceback reaches the console too
    client.service.engine.generate = real_generate
    assert run_job(client)["state"] == "done"


# ------------------------------------------------------------------------------------------ output data set
def test_add_pairs_to_the_output_dataset(client, served, tmp_path):
    s = run_job(client, nodules=[nodule(10)], seeds=[1, 2])
    assert client.post(f"/api/jobs/{s['job']}/1/save").json() == {"case_id": "serve_00000"}
    assert client.post(f"/api/jobs/{s['job']}/1/save").json() == {"case_id": "serve_00000"}  # once only
    assert client.post(f"/api/jobs/{s['job']}/0/save").json() == {"case_id": "serve_00001"}
    out = Dataset(tmp_path / "out")
    assert out.case_ids() == ["serve_00000", "serve_00001"] and out.info.extra["synthetic"] is True
    assert (out.label("serve_00000") == 2).any()
    assert "synthetic" in Image.open(out.cases["serve_00000"].image_path).text["Comment"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())["cases"]
    assert manifest["serve_00000"]["seed"] == 2 and manifest["serve_00000"]["source_case"] == "case001"
    assert json.loads((tmp_path / "out" / "run.json").read_text())["command"] == "serve"
    # a later session continues the same data set
    ds, run = served
    again = open_service(ServeConfig(model=str(run), data=str(ds), out=str(tmp_path / "out")))
    assert again.output.add(np.zeros((32, 32)), np.zeros((32, 32), np.int64), {}) == "serve_00002"
    again.close()


def test_saving_without_an_output_dataset_says_how(served, tmp_path):
    ds, run = served
    service = open_service(ServeConfig(model=str(run), data=str(ds)))
    with TestClient(create_app(service)) as c:
        assert c.get("/api/info").json()["can_save"] is False
        s = run_job(c)
        r = c.post(f"/api/jobs/{s['job']}/0/save")
        assert r.status_code == 400 and "--out" in r.json()["detail"]
    service.close()


def test_a_foreign_output_folder_is_refused(served, tmp_path):
    ds, run = served
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(MaskrayError, match="already holds files"):
        open_service(ServeConfig(model=str(run), data=str(ds), out=str(tmp_path / "busy")))


# ------------------------------------------------------------------------------------------ command line
def test_cli_binds_locally_and_warns_for_other_hosts(served, monkeypatch, capsys):
    import uvicorn

    from maskray.cli import main

    ds, run = served
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    assert main(["serve", "--model", str(run), "--data", str(ds)]) == 0
    assert calls[-1]["host"] == "127.0.0.1" and calls[-1]["port"] == 8000
    assert "no authentication" not in capsys.readouterr().err
    assert main(["serve", "--model", str(run), "--data", str(ds), "--host", "0.0.0.0", "--port", "8123"]) == 0
    assert calls[-1]["host"] == "0.0.0.0" and "WARNING" in capsys.readouterr().err
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("192.168.1.4")


@pytest.mark.parametrize("argv, words", [
    (["serve", "--data", "X"], "--model is required"),
    (["serve", "--model", "M", "--data", "X", "--port", "70000"], "--port 70000"),
    (["serve", "--model", "{run}", "--data", "{run}"], "dataset.json"),
    (["serve", "--model", "{data}", "--data", "{data}"], "not a trained maskray run"),
])
def test_cli_bad_starts_are_one_line(served, capsys, argv, words):
    from maskray.cli import main

    ds, run = served
    argv = [a.format(run=run, data=ds) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("maskray: error: ") and words in err[-1] and "Traceback" not in "".join(err)


def test_a_latent_model_is_served_in_both_modes(served, tmp_path):
    """The engine draws through generate's own batch drawer, so a latent model (decoded, and composited in pixel
    space when inserting) is served like a pixel one."""
    from test_latent_path import _codec

    from maskray.training.config import TrainConfig
    from maskray.training.trainer import train

    ds, _ = served
    _codec(tmp_path / "ae")
    tiny = {**TINY, "warmup_steps": 1}
    train(TrainConfig(data=str(ds), out=str(tmp_path / "base"), steps=2, autoencoder=str(tmp_path / "ae"), **tiny),
          "base", progress=False)
    train(TrainConfig(data=str(ds), out=str(tmp_path / "cn"), base=str(tmp_path / "base"), steps=2, **tiny),
          "controlnet", progress=False)
    service = open_service(ServeConfig(model=str(tmp_path / "cn"), data=str(ds)))
    with TestClient(create_app(service)) as c:
        info = c.get("/api/info").json()
        assert info["model"]["latent"] is True
        assert info["defaults"]["guidance_scale"] == 1.5  # a latent mask model's own, as generate uses
        new = run_job(c, nodules=[nodule(10)], seeds=[1])
        assert new["state"] == "done", new
        assert service.result(new["job"], 0)[1].record["guidance_scale"] == 1.5  # left out: the model's
        assert png(c.get(f"/api/jobs/{new['job']}/0/view/image.png").content).size == (32, 32)
        real = np.asarray(png(c.get("/api/cases/case001/image.png").content), dtype=int)
        ins = run_job(c, nodules=[nodule(10)], mode="inpaint", seeds=[1])
        out = np.asarray(png(c.get(f"/api/jobs/{ins['job']}/0/view/image.png").content), dtype=int)
        far = np.ones_like(real, dtype=bool)
        far[8:25, 14:31] = False
        assert np.array_equal(out[far], real[far]) and not np.array_equal(out[~far], real[~far])
    service.close()


def test_inserting_into_a_data_set_of_another_size_names_the_real_flag():
    from types import SimpleNamespace

    from maskray.serve.service import Service

    ws = SimpleNamespace(has_image=lambda c: True, label=lambda c: np.zeros((32, 48), np.int64))
    why = Service._inpaint_problem(SimpleNamespace(engine=SimpleNamespace(image_size=64), workspace=ws), "case000")
    assert "32 x 48 px" in why and "maskray data import --image-size 64" in why


def test_an_inserted_nodule_download_is_marked_region_preserving():
    import pydicom

    from maskray.serve.downloads import render_file

    def dcm(mode):
        data, _ = render_file("image.dcm", np.zeros((8, 8), np.float32), np.zeros((8, 8), np.uint8), (1.0, 1.0),
                              {"mode": mode, "seed": 1}, "maskray-synthetic-1-0")
        return pydicom.dcmread(io.BytesIO(data))

    new, insert = dcm("new"), dcm("inpaint")
    assert new.BurnedInAnnotation == "NO" and "BurnedInAnnotation" not in insert
    assert insert.SyntheticData == "YES" and insert.DerivationDescription.startswith("region-preserving")
