"""maskray serve --check: every generated image is scored against its mask, the page hears the verdict, and a
failing image is not added to the output data set."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TOY_LABELS
from maskray.measures.mask_check import Checker, CheckRule

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from maskray.serve.app import create_app  # noqa: E402
from maskray.serve.server import ServeConfig, open_service  # noqa: E402
from maskray.serve.workspace import Nodule  # noqa: E402
from test_serve import LUNG, nodule, run_job, tiny_served  # noqa: E402


class _Painter:
    """A segmenter stand-in that sees ``label`` in every image (plus, optionally, a nodule where it has none)."""

    values = [0, 1, 2]

    def __init__(self, label: torch.Tensor, false_spot: tuple[int, int] | None = None):
        self.label = label.clone()
        if false_spot:
            r, c = false_spot
            self.label[r - 1:r + 2, c - 1:c + 2] = 2

    def probabilities(self, images):
        onehot = torch.nn.functional.one_hot(self.label, 3).permute(2, 0, 1).float()
        return onehot.expand(images.shape[0], -1, -1, -1).clone()

    def labels_from(self, p):
        return torch.as_tensor(self.values)[p.argmax(1)]


@pytest.fixture
def checked(tmp_path_factory, tmp_path):
    """A client whose service checks with a trained tiny checker folder (``--check``), and its service."""
    from maskray.training.checker import CheckerConfig, train_checker

    ds, run = tiny_served(tmp_path_factory)
    train_checker(CheckerConfig(data=str(ds), out=str(tmp_path / "ck"), image_size=32, steps=2, batch_size=4),
                  progress=False)
    service = open_service(ServeConfig(model=str(run), data=str(ds), out=str(tmp_path / "out"),
                                       check=str(tmp_path / "ck")))
    with TestClient(create_app(service)) as c:
        c.service = service
        yield c
    service.close()


def _asked(service) -> torch.Tensor:
    """The label map the page draws for case001 with one 10 mm nodule at LUNG, at the model's size."""
    label, _ = service.workspace.place("case001", [Nodule(LUNG["y"], LUNG["x"], 10.0)])
    return service.workspace.at_size(label, service.engine.image_size)


def test_every_image_is_checked_and_the_page_hears_it(checked):
    info = checked.get("/api/info").json()
    assert info["check"]["checkers"] == 1 and info["check"]["rule"]["lesion"] == "nodule"
    s = run_job(checked, nodules=[nodule(10)], seeds=[1, 2])
    assert len(s["checks"]) == 2 and all(isinstance(c["passed"], bool) for c in s["checks"])
    assert all(c["passed"] == (not c["failures"]) for c in s["checks"])


def test_a_failing_image_is_not_added_and_a_passing_one_is_with_its_record(checked, tmp_path):
    svc = checked.service
    asked = _asked(svc)
    svc.checker = Checker(_Painter(asked, false_spot=(16, 8)), dict(TOY_LABELS), 32, CheckRule())
    bad = run_job(checked, nodules=[nodule(10)], seeds=[1])
    assert bad["checks"] == [{"passed": False, "failures": ["1 false nodule(s)"]}]
    r = checked.post(f"/api/jobs/{bad['job']}/0/save")
    assert r.status_code == 400 and "fails the check (1 false nodule(s))" in r.json()["detail"]
    assert not (tmp_path / "out" / "manifest.json").is_file() or "serve_00000" not in (
        json.loads((tmp_path / "out" / "manifest.json").read_text())["cases"])
    svc.checker = Checker(_Painter(asked), dict(TOY_LABELS), 32, CheckRule())
    good = run_job(checked, nodules=[nodule(10)], seeds=[1])
    assert good["checks"] == [{"passed": True, "failures": []}]
    assert checked.post(f"/api/jobs/{good['job']}/0/save").json() == {"case_id": "serve_00000"}
    rec = json.loads((tmp_path / "out" / "manifest.json").read_text())["cases"]["serve_00000"]
    assert rec["check"]["passed"] and rec["check"]["found"] == rec["check"]["lesions"] == 1


def test_without_a_checker_nothing_is_checked(tmp_path_factory, tmp_path):
    ds, run = tiny_served(tmp_path_factory)
    service = open_service(ServeConfig(model=str(run), data=str(ds)))
    with TestClient(create_app(service)) as c:
        assert c.get("/api/info").json()["check"] is None
        assert run_job(c, seeds=[0])["checks"] == [None]
    service.close()


def test_a_checker_of_another_size_is_refused_at_start(tmp_path_factory, tmp_path):
    from maskray.errors import MaskrayError
    from maskray.training.checker import CheckerConfig, train_checker

    ds, run = tiny_served(tmp_path_factory)
    train_checker(CheckerConfig(data=str(ds), out=str(tmp_path / "ck"), image_size=64, steps=1, batch_size=4),
                  progress=False)
    with pytest.raises(MaskrayError, match="works at 64 px"):
        open_service(ServeConfig(model=str(run), data=str(ds), check=str(tmp_path / "ck")))
