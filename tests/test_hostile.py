"""Hostile and unlucky input (issue 11, items 4 to 6): nothing swallowed, nothing left behind, no bombs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_toy_dataset
from maskray.cli import main
from maskray.data.check import check_dataset
from maskray.data.io import read_source_image
from maskray.data.splits import split_dataset
from maskray.errors import MaskrayError
from maskray.export import export_dataset
from maskray.files import read_json, staged_output
from hostile_files import bomb_dicom, bomb_mha, bomb_nifti, bomb_png


@pytest.mark.parametrize("make", [bomb_png, bomb_nifti, bomb_dicom, bomb_mha])
def test_pixel_limit_checked_from_the_header(tmp_path, make):
    suffix = {bomb_png: ".png", bomb_nifti: ".nii", bomb_dicom: ".dcm", bomb_mha: ".mha"}[make]
    path = make(tmp_path / f"bomb{suffix}")
    with pytest.raises(MaskrayError, match="megapixels exceeds the limit of 100 megapixels"):
        read_source_image(path)


def test_max_pixels_can_be_lowered_and_raised(tmp_path):
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 255).convert("L").save(tmp_path / "a.png")
    with pytest.raises(MaskrayError, match="--max-pixels"):
        read_source_image(tmp_path / "a.png", max_pixels=1000)
    assert read_source_image(tmp_path / "a.png", max_pixels=4096).pixels.shape == (64, 64)


# ------------------------------------------------------------------------------------------- JSON
def test_one_json_reader_names_the_file_and_the_problem(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(MaskrayError, match=r"x.json: not valid JSON \(line 1"):
        read_json(p)
    p.write_text("[1, 2]")
    with pytest.raises(MaskrayError, match="x.json: the file must hold an object at the top level, not list"):
        read_json(p)
    with pytest.raises(MaskrayError, match="nothing.json: file not found"):
        read_json(tmp_path / "nothing.json")


def test_corrupt_cases_json_is_an_error_not_an_empty_record(toy_dataset):
    (toy_dataset / "cases.json").write_text('{"case000": {"patient": "A"')
    with pytest.raises(MaskrayError, match="cases.json: not valid JSON"):
        split_dataset(toy_dataset, 0.2, 0.2, 0)
    assert not (toy_dataset / "splits.json").exists()
    rep = check_dataset(toy_dataset, progress=False)
    assert any("cases.json: not valid JSON" in p for p in rep.problems) and not rep.ok


@pytest.mark.parametrize("spacing", [[-1, 0], [0.5], ["a", 1], [float("inf"), 1.0], 3])
def test_invalid_spacing_refused(toy_dataset, spacing):
    meta = json.loads((toy_dataset / "dataset.json").read_text())
    meta["spacing"] = spacing
    (toy_dataset / "dataset.json").write_text(json.dumps(meta))
    rep = check_dataset(toy_dataset, progress=False)
    assert len(rep.problems) == 1 and "'spacing'" in rep.problems[0]


def test_splits_of_the_wrong_shape(toy_dataset):
    (toy_dataset / "splits.json").write_text(json.dumps({"train": "case000", "val": [], "test": []}))
    rep = check_dataset(toy_dataset, progress=False)
    assert any("splits.json: 'train' must be a list of case ids" in p for p in rep.problems)


def test_export_refuses_a_corrupt_manifest_instead_of_dropping_provenance(toy_dataset, tmp_path):
    (toy_dataset / "manifest.json").write_text('{"cases": {"case000": 3}}')
    with pytest.raises(MaskrayError, match="manifest.json: 'cases' must map each case id to an object"):
        export_dataset(toy_dataset, tmp_path / "o", "png")
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))


@pytest.mark.parametrize("value", ['"64"', "64.7"])
def test_config_file_sizes_must_be_whole_numbers(tmp_path, value, capsys):
    (tmp_path / "c.yaml").write_text(f"image_size: {value}\n")
    assert main(["data", "import", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o"),
                 "--images", str(tmp_path)]) == 2
    assert "option 'image_size' has value" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- paths
def test_dotdot_in_a_csv_file_name_refused(tmp_path, capsys):
    root = make_toy_dataset(tmp_path / "t", n=2)
    (tmp_path / "n.csv").write_text("file,x,y,diameter\n../secret/case000_0000.png,4,4,2\n")
    rc = main(["data", "import", "--out", str(tmp_path / "o"), "--images", str(root / "imagesTr"),
               "--nodules", str(tmp_path / "n.csv"), "--nodule-unit", "px"])
    assert rc == 2 and "row 2: file name '../secret/case000_0000.png' holds '..'" in capsys.readouterr().err


@pytest.mark.parametrize("which", ["--images", "--out"])
def test_symlink_loop_refused(tmp_path, which, capsys):
    root = make_toy_dataset(tmp_path / "t", n=2)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    args = {"--images": str(root / "imagesTr"), "--out": str(tmp_path / "o")}
    args[which] = str(loop)
    assert main(["data", "import", *[x for kv in args.items() for x in kv]]) == 2
    assert "symbolic link loop" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- leftovers
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_staging_left_by_a_killed_run_is_removed_by_the_next(toy_dataset, tmp_path, capsys):
    stale = tmp_path / f".out.staging-{_dead_pid()}-0123abcd"
    (stale / "imagesTr").mkdir(parents=True)
    live = tmp_path / f".out.staging-{os.getpid()}-0123abcd"  # a running export's: left alone
    live.mkdir()
    export_dataset(toy_dataset, tmp_path / "out", "png")
    assert not stale.exists() and live.exists()
    assert "left behind by an interrupted run" in capsys.readouterr().err


def test_staged_output_removes_its_folder_on_error(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with staged_output(tmp_path / "o") as tmp:
            (tmp / "f").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_import_leaves_no_worker_and_the_next_run_cleans_up(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(600):  # enough work (about a second) that the workers outlive the polling below on a busy machine
        Image.fromarray(rng.integers(0, 255, (192, 192), dtype=np.uint8)).save(src / f"img{i:03d}.png")
    cmd = [sys.executable, "-m", "maskray", "data", "import", "--images", str(src), "--out", str(tmp_path / "o"),
           "--workers", "2", "--image-size", "128", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    deadline = time.time() + 60
    while time.time() < deadline and len(workers) < 2 and proc.poll() is None:
        time.sleep(0.05)
        workers = _children(proc.pid)
    assert len(workers) >= 2, "the import never started its workers"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{w}").exists() and
                                         (Path(f"/proc/{w}/stat").read_text().split()[2] != "Z") for w in workers):
        time.sleep(0.05)
    alive = [w for w in workers if Path(f"/proc/{w}").exists()
             and Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    assert not alive, f"workers {alive} outlived their killed parent"
    assert list(tmp_path.glob(".o.staging-*")), "expected the killed run's staging folder"
    assert main(cmd[3:] + ["--workers", "1", "--image-size", "16"]) == 0
    assert not list(tmp_path.glob(".o.*")) and (tmp_path / "o" / "dataset.json").is_file()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_export_killed_with_sigkill_leaves_only_a_staging_folder_the_next_export_removes(tmp_path):
    src = make_toy_dataset(tmp_path / "src", n=150, size=32)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "maskray", "export", str(src), "--format", "nifti", "--out", str(tmp_path / "o")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    staging: list[Path] = []
    while time.time() < deadline and proc.poll() is None:
        staging = [p for p in tmp_path.glob(".o.staging-*") if (p / "imagesTr").is_dir()
                   and len(list((p / "imagesTr").iterdir())) >= 5]
        if staging:
            break
        time.sleep(0.02)
    assert staging and proc.poll() is None, "the export finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "o").exists() and staging[0].exists()  # nothing half-written at --out
    assert main(cmd[3:]) == 0
    assert not list(tmp_path.glob(".o.*")) and len(list((tmp_path / "o" / "imagesTr").iterdir())) == 150
