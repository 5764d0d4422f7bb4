import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset as DicomDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import make_toy_dataset
from maskray.cli import main
from maskray.data.dataset import Dataset
from maskray.errors import MaskrayError
from maskray.export import export_dataset
from maskray.export.common import Anonymiser

SALT = "test-salt"


def sid(case: str, synthetic: bool = True) -> str:
    """The exported id of ``case`` under the tests' salt."""
    return Anonymiser(SALT, synthetic).case_id(case)

PATIENT = {
    "PatientName": "DOE^JOHN^Q", "PatientID": "PID-93847561", "PatientBirthDate": "19470312",
    "PatientSex": "M", "PatientAddress": "12 Elm Street Springfield", "InstitutionName": "St Example Hospital",
    "InstitutionAddress": "1 Hospital Road Exampletown", "ReferringPhysicianName": "HOUSE^GREGORY",
    "OperatorsName": "SMITH^ANNA", "AccessionNumber": "ACC77665544", "StationName": "XRAYROOM7",
    "StudyID": "STUDY4242", "OtherPatientIDs": "OTHER-111222",
}


@pytest.fixture
def synth(tmp_path):
    """A toy dataset that says it was generated: run.json from 'generate' and a per-case manifest."""
    root = make_toy_dataset(tmp_path / "gen", n=3, size=32)
    meta = json.loads((root / "dataset.json").read_text())
    meta["spacing"] = [0.7, 0.5]
    (root / "dataset.json").write_text(json.dumps(meta))
    (root / "run.json").write_text(json.dumps({"command": "generate", "seed": 11, "checkpoint": "/ckpt/controlnet-900"}))
    (root / "manifest.json").write_text(json.dumps(
        {"cases": {f"case{i:03d}": {"source_case": f"real{i:03d}", "seed": [11, i]} for i in range(3)}}))
    return root


def _source_dicom(path, rows=64, cols=64, spacing=("0.35", "0.25")):
    uids = {"StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(), "SOPInstanceUID": generate_uid()}
    ds = DicomDataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = uids["SOPInstanceUID"]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    for k, v in {**PATIENT, **uids}.items():
        setattr(ds, k, v)
    ds.Modality = "DX"
    ds.PixelSpacing = list(spacing)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.PixelData = np.full((rows, cols), 1234, np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return [*PATIENT.values(), *uids.values()]


def test_dicom_is_secondary_capture_synthetic_and_copies_no_patient_data(synth, tmp_path):
    src_dir = tmp_path / "srcdicom"
    src_dir.mkdir()
    secrets = _source_dicom(src_dir / "case000.dcm", spacing=("0.3", "0.2"))
    out = export_dataset(synth, tmp_path / "dcm", "dicom", source_dicom_dir=src_dir, salt=SALT)
    back = {sid(c): c for c in ("case000", "case001", "case002")}
    files = sorted((out / "images").glob("*.dcm"))
    assert sorted(f.stem for f in files) == sorted(back)
    study_uids = set()
    for f in files:
        d = pydicom.dcmread(f)
        assert d.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and d.file_meta.MediaStorageSOPClassUID == d.SOPClassUID
        assert d[0x0008, 0x001C].value == "YES" and d.BurnedInAnnotation == "NO" and d.ConversionType == "SYN"
        assert d.PhotometricInterpretation == "MONOCHROME2" and d.BitsStored == 8
        raw = np.asarray(Image.open(synth / "imagesTr" / f"{back[f.stem]}_0000.png"))
        assert np.array_equal(d.pixel_array, raw)
        study_uids.add(d.StudyInstanceUID)
        # case000: the source DICOM's spacing rescaled 64 -> 32 px; others: dataset.json's
        expected = [0.6, 0.4] if back[f.stem] == "case000" else [0.7, 0.5]
        assert [float(v) for v in d.PixelSpacing] == pytest.approx(expected)
        assert d.PatientID == f.stem and str(d.PatientName) == f"SYNTHETIC^{f.stem}"
        assert "source ref" in d.DerivationDescription and "real" not in d.DerivationDescription
        assert d.StudyDate == "" and "InstanceCreationDate" not in d
        assert d.PatientBirthDate == "" and "InstitutionName" not in d
    assert len(study_uids) == 3
    # Not one identifying value or UID of the source appears in any byte of the export.
    blob = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    for s in secrets:
        if len(s) >= 6:  # short codes such as 'M' occur by chance in pixel data
            assert s.encode() not in blob, s
    assert pydicom.dcmread(files[0]).PatientSex == ""
    for case in ("case000", "real000", "controlnet-900", "ckpt"):
        assert case.encode() not in blob, case
    # the same salt gives the same UIDs: a re-export is reproducible
    again = export_dataset(synth, tmp_path / "dcm2", "dicom", source_dicom_dir=src_dir, salt=SALT)
    assert pydicom.dcmread(again / "images" / files[0].name).SOPInstanceUID == pydicom.dcmread(files[0]).SOPInstanceUID
    lab = nib.load(out / "labels" / f"{sid('case000')}.nii.gz")
    assert np.array_equal(np.asarray(lab.dataobj)[:, :, 0].T, np.asarray(Image.open(synth / "labelsTr" / "case000.png")))


def test_dicom_spacing_comes_from_source_geometry_when_dataset_has_none(synth, tmp_path):
    meta = json.loads((synth / "dataset.json").read_text())
    del meta["spacing"]
    (synth / "dataset.json").write_text(json.dumps(meta))
    (tmp_path / "s").mkdir()
    _source_dicom(tmp_path / "s" / "real001.dcm")  # matched through the manifest's source_case
    out = export_dataset(synth, tmp_path / "dcm", "dicom", source_dicom_dir=tmp_path / "s", salt=SALT)
    d = pydicom.dcmread(out / "images" / f"{sid('case001')}.dcm")
    assert [float(v) for v in d.PixelSpacing] == pytest.approx([0.7, 0.5])  # 0.35*64/32, 0.25*64/32
    assert "PixelSpacing" not in pydicom.dcmread(out / "images" / f"{sid('case000')}.dcm")


def test_nifti_keeps_spacing_marks_synthetic_and_reads_back(synth, tmp_path):
    out = export_dataset(synth, tmp_path / "nii", "nifti", salt=SALT)
    img = nib.load(out / "imagesTr" / f"{sid('case001')}_0000.nii.gz")
    assert np.allclose(np.diag(img.affine)[:3], [0.5, 0.7, 1.0])  # (sx, sy, 1)
    assert img.header["descrip"].tobytes().rstrip(b"\0") == b"maskray synthetic"
    a, b = Dataset(synth), Dataset(out)
    assert b.info.file_ending == ".nii.gz" and b.info.spacing == (0.7, 0.5)
    for c in a.case_ids():
        assert np.abs(a.image(c).numpy() - b.image(sid(c)).numpy()).max() < 1e-6
        assert np.array_equal(a.label(c).numpy(), b.label(sid(c)).numpy())


def test_png_copies_pixels_exactly_with_text_chunks_and_provenance(synth, tmp_path):
    out = export_dataset(synth, tmp_path / "png", "png", salt=SALT)
    im = Image.open(out / "imagesTr" / f"{sid('case002')}_0000.png")
    assert im.text["Comment"] == "maskray synthetic image" and im.text["Software"].startswith("maskray")
    assert im.text["Title"] == sid("case002")
    assert np.array_equal(np.asarray(im), np.asarray(Image.open(synth / "imagesTr" / "case002_0000.png")))
    assert sorted(p.name for p in (out / "provenance").iterdir()) == [
        "generation_config.json", "manifest.json", "model_card.json"]
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "export" and run["config"]["synthetic"] is True
    assert "argv" not in run and "time_utc" not in run
    manifest = json.loads((out / "provenance" / "manifest.json").read_text())["cases"]
    ref = manifest[sid("case002")]["source_ref"]
    assert ref == Anonymiser(SALT, True).ref("real002") and "real002" not in json.dumps(manifest)
    assert len(Dataset(out)) == 3


def test_real_data_is_not_marked_synthetic(tmp_path):
    root = make_toy_dataset(tmp_path / "real", n=2, size=32)
    out = export_dataset(root, tmp_path / "png", "png", salt=SALT)
    name = sid("case000", synthetic=False)
    assert name.startswith("case_")
    assert Image.open(out / "imagesTr" / f"{name}_0000.png").text["Comment"] == "maskray export (image)"
    d = pydicom.dcmread(export_dataset(root, tmp_path / "dcm", "dicom", salt=SALT) / "images" / f"{name}.dcm")
    assert d.SyntheticData == "NO"


def test_nnunet_raw_layout_and_consecutive_labels(tmp_path):
    root = make_toy_dataset(tmp_path / "src", n=4, size=32)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "lung": 1, "nodule": 5}  # not consecutive: nnU-Net refuses that
    (root / "dataset.json").write_text(json.dumps(meta))
    for p in (root / "labelsTr").iterdir():
        lab = np.asarray(Image.open(p)).copy()
        lab[lab == 2] = 5
        Image.fromarray(lab).save(p)
    (root / "splits.json").write_text(json.dumps({"train": ["case000", "case001", "case002"], "val": [], "test": ["case003"]}))
    raw = tmp_path / "nnUNet_raw"
    out = export_dataset(root, raw, "nnunet", dataset_id=7, dataset_name="Toy CXR", salt=SALT)
    assert out == raw / "Dataset007_Toy_CXR"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "lung": 1, "nodule": 2}
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".png" and meta["channel_names"] == {"0": "CR"}
    ids = [sid(f"case{i:03d}", synthetic=False) for i in range(4)]
    tr = sorted(p.name for p in (out / "imagesTr").iterdir())
    assert tr == sorted(f"{c}_0000.png" for c in ids[:3])
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == sorted(f"{c}.png" for c in ids[:3])
    assert [p.name for p in (out / "imagesTs").iterdir()] == [f"{ids[3]}_0000.png"]
    lab = np.asarray(Image.open(out / "labelsTr" / f"{ids[0]}.png"))
    assert lab.ndim == 2 and set(np.unique(lab)) == {0, 1, 2}
    assert np.asarray(Image.open(out / "imagesTr" / f"{ids[0]}_0000.png")).ndim == 2
    # a second dataset with the same id would make `-d 7` ambiguous
    with pytest.raises(MaskrayError, match="id 007"):
        export_dataset(root, raw, "nnunet", dataset_id=7, dataset_name="Other")


def test_mask_only_dataset_exports_labels_but_not_to_dicom(tmp_path):
    from maskray.data.masks import MaskSynthConfig, synthesize_masks

    root = make_toy_dataset(tmp_path / "src", n=2, size=32)
    masks = synthesize_masks(root, tmp_path / "m", MaskSynthConfig(mode="copy"))
    out = export_dataset(masks, tmp_path / "png", "png")
    assert not (out / "imagesTr").exists() and len(list((out / "labelsTr").iterdir())) == 2
    refs = json.loads((out / "provenance" / "manifest.json").read_text())["cases"]
    assert len(refs) == 2 and all(len(r["source_ref"]) == 16 for r in refs.values())
    with pytest.raises(MaskrayError, match="mask-only"):
        export_dataset(masks, tmp_path / "dcm", "dicom")
    assert not (tmp_path / "dcm").exists() or not any((tmp_path / "dcm").iterdir())


def test_cli_export_refuses_bad_input(synth, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["export", str(synth), "--format", "nifti", "--out", str(out)]) == 0
    assert main(["export", str(synth), "--format", "nifti", "--out", str(out)]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert main(["export", str(synth), "--format", "nifti", "--out", str(out), "--overwrite"]) == 0
    assert main(["export", str(tmp_path / "nothing"), "--format", "png", "--out", str(tmp_path / "p")]) == 2
    assert main(["export", str(synth), "--format", "nnunet", "--dataset-id", "1000", "--out", str(tmp_path / "n")]) == 2


def test_dicom_claims_no_burned_in_text_only_where_maskray_made_every_pixel(synth, tmp_path):
    from maskray.export.dicom import REGION_PRESERVING, build_dataset

    manifest = json.loads((synth / "manifest.json").read_text())
    manifest["cases"]["case000"]["mode"] = "region-preserving"
    manifest["cases"]["case001"]["mode"] = "full"
    (synth / "manifest.json").write_text(json.dumps(manifest))
    out = export_dataset(synth, tmp_path / "dcm", "dicom", salt=SALT)
    region = pydicom.dcmread(out / "images" / f"{sid('case000')}.dcm")
    full = pydicom.dcmread(out / "images" / f"{sid('case001')}.dcm")
    assert full.BurnedInAnnotation == "NO" and not full.DerivationDescription.startswith("region")
    assert "BurnedInAnnotation" not in region and region.SyntheticData == "YES"
    assert region.DerivationDescription.startswith(REGION_PRESERVING) and "DERIVED" in region.ImageType
    real = build_dataset(np.zeros((4, 4), np.uint8), None, "case_x", False, "maskray export")
    assert "BurnedInAnnotation" not in real and real.SyntheticData == "NO"
