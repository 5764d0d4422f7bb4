"""The malformed-input zoo: every case must reach a clean error through the real CLI, with nothing left behind.

Clean means: a non-zero exit, no traceback, the first line of stderr is ``maskray: error: ...`` naming the
bad file or option (``data check`` instead lists the problem in its report and exits 1), and no output folder,
staging folder or temporary file is left. ``test_zoo_count`` prints the count (``pytest -s``).
"""

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from conftest import make_toy_dataset
from maskray.cli import main
from hostile_files import bomb_dicom, bomb_mha, bomb_nifti, bomb_png


def _png(path, arr):
    Image.fromarray(np.asarray(arr)).save(path)


def _pair(tmp, name="a", size=16):
    """A valid image and mask in ``tmp/img`` and ``tmp/msk``."""
    (tmp / "img").mkdir(exist_ok=True)
    (tmp / "msk").mkdir(exist_ok=True)
    _png(tmp / "img" / f"{name}.png", np.arange(size * size, dtype=np.uint8).reshape(size, size))
    _png(tmp / "msk" / f"{name}.png", (np.arange(size * size).reshape(size, size) % 2).astype(np.uint8))


# each import case: (what to break, the name that must appear in the error)
def imp_corrupt_png(t): (t / "img" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage"); return "a.png"
def imp_truncated_png(t): p = t / "img" / "a.png"; p.write_bytes(p.read_bytes()[:45]); return "a.png"
def imp_empty_file(t): (t / "img" / "a.png").write_bytes(b""); return "a.png"
def imp_colour_mask(t): _png(t / "msk" / "a.png", np.dstack([np.zeros((16, 16), np.uint8), np.ones((16, 16), np.uint8), np.zeros((16, 16), np.uint8)])); return "a.png"
def imp_mask_size(t): _png(t / "msk" / "a.png", np.zeros((8, 16), np.uint8)); return "a.png"
def imp_unknown_value(t): _png(t / "msk" / "a.png", np.full((16, 16), 9, np.uint8)); return "a.png"
def imp_volume(t): (t / "img" / "a.png").unlink(); nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.float32), np.eye(4)), t / "img" / "a.nii.gz"); return "a.nii.gz"
def imp_nan(t): (t / "img" / "a.png").unlink(); nib.save(nib.Nifti1Image(np.full((16, 16), np.nan, np.float32), np.eye(4)), t / "img" / "a.nii"); return "a.nii"
def imp_truncated_nii(t): (t / "img" / "a.png").unlink(); nib.save(nib.Nifti1Image(np.zeros((16, 16), np.float32), np.eye(4)), t / "img" / "a.nii.gz"); p = t / "img" / "a.nii.gz"; p.write_bytes(p.read_bytes()[:40]); return "a.nii.gz"
def imp_dicom_garbage(t): (t / "img" / "a.png").unlink(); (t / "img" / "a.dcm").write_bytes(b"DICM" * 50); return "a.dcm"
def imp_dicom_no_pixels(t):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian
    (t / "img" / "a.png").unlink(); ds = Dataset(); ds.file_meta = FileMetaDataset(); ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    ds.PatientID = "x"; ds.save_as(t / "img" / "a.dcm", enforce_file_format=True); return "a.dcm"
def imp_bomb_png(t): bomb_png(t / "img" / "a.png"); return "a.png"
def imp_bomb_nii(t): (t / "img" / "a.png").unlink(); bomb_nifti(t / "img" / "a.nii"); return "a.nii"
def imp_bomb_dcm(t): (t / "img" / "a.png").unlink(); bomb_dicom(t / "img" / "a.dcm"); return "a.dcm"
def imp_bomb_mha(t): (t / "img" / "a.png").unlink(); bomb_mha(t / "img" / "a.mha"); return "a.mha"
def imp_corrupt_mha(t): (t / "img" / "a.png").unlink(); (t / "img" / "a.mha").write_bytes(b"ObjectType = Image\nNDims = x\n"); return "a.mha"
def imp_constant(t): _png(t / "img" / "a.png", np.full((16, 16), 7, np.uint8)); return "a.png"
def imp_no_mask(t): _pair(t, "b"); (t / "msk" / "b.png").unlink(); return "b.png"
def imp_no_image(t): _png(t / "msk" / "c.png", np.zeros((16, 16), np.uint8)); return "c.png"
def imp_same_stem(t): _png(t / "img" / "a.tif", np.zeros((16, 16), np.uint8)); return "a."
def imp_float_mask(t): (t / "msk" / "a.png").unlink(); nib.save(nib.Nifti1Image(np.full((16, 16), 0.5, np.float32), np.eye(4)), t / "msk" / "a.nii"); return "a.nii"
def imp_multiframe(t):
    frames = [Image.fromarray(np.full((16, 16), i, np.uint8)) for i in range(3)]
    (t / "img" / "a.png").unlink(); frames[0].save(t / "img" / "a.tif", save_all=True, append_images=frames[1:]); return "a.tif"
def imp_csv_dotdot(t): (t / "n.csv").write_text("file,x,y,diameter\n../a.png,4,4,2\n"); return "n.csv"
def imp_csv_text(t): (t / "n.csv").write_text("file,x,y,diameter\na.png,four,4,2\n"); return "n.csv"
def imp_csv_column(t): (t / "n.csv").write_text("name,x,y,diameter\na.png,4,4,2\n"); return "n.csv"
def imp_csv_outside(t): (t / "n.csv").write_text("file,x,y,diameter\na.png,400,4,2\n"); return "n.csv"
def imp_csv_binary(t): (t / "n.csv").write_bytes(b"\xff\xfe\x00bad\x00"); return "n.csv"
def imp_images_loop(t): (t / "loop").symlink_to(t / "loop"); return "loop"
def imp_file_loop(t): (t / "img" / "b.png").symlink_to(t / "img" / "b.png"); return "b.png"
def imp_out_loop(t): (t / "outloop").symlink_to(t / "outloop"); return "outloop"
def imp_out_in_source(t): return "overlaps the source"
def imp_config_string_size(t): (t / "c.yaml").write_text('size: "64"\n'); return "size"
def imp_config_float_size(t): (t / "c.yaml").write_text("size: 64.7\n"); return "size"
def imp_config_corrupt(t): (t / "c.yaml").write_text("size: [1, \n"); return "c.yaml"
def imp_config_unknown(t): (t / "c.yaml").write_text("sizes: 64\n"); return "sizes"
def imp_nnunet_bad_json(t): (t / "nn").mkdir(); (t / "nn" / "dataset.json").write_text("{"); return "dataset.json"

IMPORT_CASES = [v for k, v in dict(globals()).items() if k.startswith("imp_")]


def _import_args(t, case) -> list[str]:
    args = ["data", "import", "--images", str(t / "img"), "--masks", str(t / "msk"), "--labels", "lung=1",
            "--out", str(t / "out"), "--image-size", "16", "--no-progress"]
    name = case.__name__
    if name.startswith("imp_csv"):
        args = ["data", "import", "--images", str(t / "img"), "--nodules", str(t / "n.csv"), "--nodule-unit", "px",
                "--out", str(t / "out"), "--image-size", "16", "--no-progress"]
    if name == "imp_images_loop":
        args[args.index("--images") + 1] = str(t / "loop")
    if name == "imp_out_loop":
        args[args.index("--out") + 1] = str(t / "outloop")
    if name == "imp_out_in_source":
        args[args.index("--out") + 1] = str(t / "img" / "inner")
    if name.startswith("imp_config"):
        args += ["--config", str(t / "c.yaml")]
    if name == "imp_nnunet_bad_json":
        args = ["data", "import", "--nnunet", str(t / "nn"), "--out", str(t / "out"), "--no-progress"]
    return args


# check cases: break a valid dataset; the report must list a problem naming the file
def chk_dataset_json_corrupt(r): (r / "dataset.json").write_text("{"); return "dataset.json"
def chk_dataset_json_list(r): (r / "dataset.json").write_text("[]"); return "dataset.json"
def chk_labels_strings(r): _edit(r, labels={"background": "0", "lung": "1"}); return "dataset.json"
def chk_spacing_negative(r): _edit(r, spacing=[-1, 0]); return "spacing"
def chk_file_ending_number(r): _edit(r, file_ending=5); return "file_ending"
def chk_num_training_text(r): _edit(r, numTraining="six"); return "numTraining"
def chk_splits_corrupt(r): (r / "splits.json").write_text("{"); return "splits.json"
def chk_splits_wrong_type(r): (r / "splits.json").write_text('{"train": 3}'); return "splits.json"
def chk_splits_patients_list(r): (r / "splits.json").write_text('{"train": [], "patients": []}'); return "splits.json"
def chk_cases_corrupt(r): (r / "cases.json").write_text("{"); return "cases.json"
def chk_cases_list(r): (r / "cases.json").write_text("[]"); return "cases.json"
def chk_cases_bad_spacing(r): (r / "cases.json").write_text('{"case000": {"spacing": [0, 1]}}'); return "cases.json"
def chk_image_unreadable(r): (r / "imagesTr" / "case000_0000.png").write_bytes(b"xx"); return "case000_0000.png"
def chk_image_bomb(r): bomb_png(r / "imagesTr" / "case000_0000.png"); return "case000_0000.png"
def chk_label_bomb(r): bomb_png(r / "labelsTr" / "case000.png"); return "case000.png"
def chk_dataset_json_binary(r): (r / "dataset.json").write_bytes(b"\xff\xfe\xfa"); return "dataset.json"

CHECK_CASES = [v for k, v in dict(globals()).items() if k.startswith("chk_")]


def _edit(root, **changes):
    meta = json.loads((root / "dataset.json").read_text())
    meta.update(changes)
    (root / "dataset.json").write_text(json.dumps(meta))


# JSON read by other commands (export, masks, split)
def js_export_run_corrupt(r): (r / "run.json").write_text("{"); return ["export", str(r), "--out"], "run.json"
def js_export_manifest_list(r): (r / "manifest.json").write_text("[]"); return ["export", str(r), "--out"], "manifest.json"
def js_export_masks_bad_source(r): (r / "masks.json").write_text('{"cases": {"case000": {"source_case": 5}}}'); return ["export", str(r), "--out"], "masks.json"
def js_masks_dataset_json(r): _edit(r, labels=[]); return ["masks", "--from", str(r), "--out"], "dataset.json"
def js_split_cases_corrupt(r): (r / "cases.json").write_text("{"); return ["data", "split", str(r)], "cases.json"
def js_export_splits_corrupt(r): (r / "splits.json").write_text('{"test": "x"}'); return ["export", str(r), "--format", "nnunet", "--out"], "splits.json"
def js_export_out_loop(r): (r.parent / "oloop").symlink_to(r.parent / "oloop"); return ["export", str(r), "--out", str(r.parent / "oloop")], "oloop"

JSON_CASES = [v for k, v in dict(globals()).items() if k.startswith("js_")]


def _cli(args: list[str]) -> int:
    """The CLI's exit code; an exception escaping it (a traceback for the user) counts as exit code -1."""
    try:
        return main(args)
    except Exception as e:  # noqa: BLE001 - the zoo counts these as failures
        import traceback

        traceback.print_exc()
        print(f"Traceback: {e.__class__.__name__}", file=__import__("sys").stderr)
        return -1
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2


def _leftovers(folder) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".staging-" in p.name or ".tmp-" in p.name]


def _clean_error(rc: int, err: str, needle: str) -> bool:
    first = err.strip().splitlines()[0] if err.strip() else ""
    return rc not in (0, -1) and "Traceback" not in err and first.startswith("maskray: error:") and needle in first


def run_import(case, tmp_path, capsys) -> bool:
    _pair(tmp_path)
    needle = case(tmp_path)
    rc = _cli(_import_args(tmp_path, case))
    err = capsys.readouterr().err
    ok = _clean_error(rc, err, needle) and not (tmp_path / "out").exists() and not _leftovers(tmp_path)
    return ok or print(case.__name__, rc, err[:300])


def run_check(case, tmp_path, capsys) -> bool:
    root = make_toy_dataset(tmp_path / "ds", n=3)
    (root / "splits.json").write_text(json.dumps({"train": ["case000", "case001", "case002"], "val": [], "test": []}))
    needle = case(root)
    rc = _cli(["data", "check", str(root), "--no-progress"])
    cap = capsys.readouterr()
    problems = cap.out.split("problems:", 1)[-1]
    ok = rc == 1 and "Traceback" not in cap.err and needle in problems and not _leftovers(tmp_path)
    return ok or print(case.__name__, rc, cap.out[-300:], cap.err[:300])


def run_json(case, tmp_path, capsys) -> bool:
    root = make_toy_dataset(tmp_path / "ds", n=3)
    args, needle = case(root)
    if args[-1] == "--out":
        args = args + [str(tmp_path / "out")]
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = _cli(args)
    err = capsys.readouterr().err
    after = sorted(p.name for p in tmp_path.iterdir())
    wrote_splits = case.__name__ == "js_split_cases_corrupt" and (root / "splits.json").exists()
    ok = _clean_error(rc, err, needle) and before == after and not wrote_splits and not _leftovers(tmp_path)
    return ok or print(case.__name__, rc, err[:300])


ALL = [(run_import, c) for c in IMPORT_CASES] + [(run_check, c) for c in CHECK_CASES] + [(run_json, c) for c in JSON_CASES]


@pytest.mark.parametrize("runner,case", ALL, ids=[c.__name__ for _, c in ALL])
def test_zoo_case(runner, case, tmp_path, capsys):
    assert runner(case, tmp_path, capsys), case.__name__


def test_zoo_count(tmp_path_factory, capsys):
    clean = 0
    for runner, case in ALL:
        tmp = tmp_path_factory.mktemp(case.__name__)
        clean += bool(runner(case, tmp, capsys))
    with capsys.disabled():
        print(f"\nmalformed-input zoo: {clean} of {len(ALL)} clean (import {len(IMPORT_CASES)}, check "
              f"{len(CHECK_CASES)}, JSON {len(JSON_CASES)})")
    assert clean == len(ALL)
