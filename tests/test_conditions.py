"""Extra conditions: edge maps, several ControlNets at once with a scale each, patient attributes with their own
guidance; attributes read at import and drawn by the phantom; evaluate's attribute and edge scores."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from maskray.data.importers import ImportConfig, import_folder
from maskray.diffusion.attributes import drop_attributes, encode, parse_request
from maskray.diffusion.card import ModelCard
from maskray.diffusion.conditioning import Conditions, one_hot, parse_scales
from maskray.diffusion.edges import EdgeConfig, edge_map
from maskray.diffusion.model import MaskModel
from maskray.diffusion.networks import ControlledUNet, ControlNetSet, UNetConfig, build_controlnet, build_unet
from maskray.diffusion.sampling import guidance_terms, make_scheduler, sample
from maskray.diffusion.store import load_model
from maskray.errors import MaskrayError
from maskray.evaluation.edges import edge_f1
from maskray.pipelines.generate import GenerateConfig, generate
from maskray.training.batch_conditions import ConditionMaker
from maskray.training.config import TrainConfig
from maskray.training.trainer import train

VOCAB = {"sex": ("F", "M"), "age": ("20-40", "40-60", "60-80")}
TINY = dict(image_size=32, batch_size=4, block_out_channels=(8, 16), norm_num_groups=4, validation_cases=2,
            validation_sampler_steps=2, precision="no", checkpoint_every=3)


def _unzero(module: torch.nn.Module, seed: int) -> None:
    """Give a fresh ControlNet's zero-initialised joins random weights, so that its condition shows."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if any(k in name for k in ("controlnet_down_blocks", "controlnet_mid_block", "cond_embedding.conv_out")):
            p.data = torch.randn(p.shape, generator=g) * 0.2


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    unet = build_unet(UNetConfig(block_out_channels=(8, 16), norm_num_groups=4), 32, attribute_dim=5)
    mask_net, edge_net = build_controlnet(unet, 2), build_controlnet(unet, 1)
    fresh = ControlledUNet(unet, ControlNetSet({"mask": build_controlnet(unet, 2), "edges": build_controlnet(unet, 1)}))
    _unzero(mask_net, 1), _unzero(edge_net, 2)
    model = ControlledUNet(unet, ControlNetSet({"mask": mask_net, "edges": edge_net})).eval()
    return model, fresh.eval()


def _inputs(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 32, 32, generator=g)
    t = torch.full((n,), 500)
    mask = (torch.rand(n, 2, 32, 32, generator=g) > 0.5).float()
    edges = (torch.rand(n, 1, 32, 32, generator=g) > 0.8).float()
    attrs = encode([{"sex": "F", "age": "60-80"}] * n, VOCAB)
    return x, t, mask, edges, attrs


@torch.no_grad()
def test_each_condition_and_each_attribute_changes_the_output(nets):
    model, _ = nets
    x, t, mask, edges, attrs = _inputs()
    full = model(x, t, Conditions({"mask": mask, "edges": edges}, attrs))
    for other in (Conditions({"mask": 1 - mask, "edges": edges}, attrs),
                  Conditions({"mask": mask, "edges": torch.roll(edges, 5, -1)}, attrs),
                  Conditions({"mask": mask, "edges": edges}, encode([{"sex": "M", "age": "60-80"}] * 2, VOCAB)),
                  Conditions({"mask": mask, "edges": edges}, encode([{"sex": "F", "age": "20-40"}] * 2, VOCAB))):
        assert (model(x, t, other) - full).abs().max() > 1e-3


@torch.no_grad()
def test_dropped_conditions_leave_the_base_output(nets):
    model, fresh = nets
    x, t, mask, edges, attrs = _inputs(1)
    base = model.unet(x, t, encoder_hidden_states=None, class_labels=attrs, return_dict=False)[0]
    for cond, scale in ((Conditions({"mask": None, "edges": None}, attrs), 1.0),
                        (Conditions({"mask": mask, "edges": edges}, attrs), {"mask": 0.0, "edges": 0.0})):
        assert torch.equal(model(x, t, cond, scale), base)
    # fresh ControlNets (zero-initialised joins) leave the base's output for any condition
    assert torch.allclose(fresh(x, t, Conditions({"mask": mask, "edges": edges}, attrs)), base, atol=1e-6)


@torch.no_grad()
def test_per_condition_scale(nets):
    model, _ = nets
    x, t, mask, edges, attrs = _inputs(2)
    both = Conditions({"mask": mask, "edges": edges}, attrs)
    mask_only = model(x, t, Conditions({"mask": mask, "edges": None}, attrs))
    assert torch.equal(model(x, t, both, {"mask": 1.0, "edges": 0.0}), mask_only)
    half = model(x, t, both, {"mask": 1.0, "edges": 0.5})
    full = model(x, t, both, {"mask": 1.0, "edges": 1.0})
    assert (half - mask_only).abs().max() > 1e-4 and (half - full).abs().max() > 1e-4
    assert parse_scales("mask=1,edges=0.5", ["mask", "edges"], "--conditioning-scale") == {"mask": 1.0, "edges": 0.5}
    assert parse_scales("2", ["mask"], "--guidance-scale") == 2.0
    with pytest.raises(MaskrayError, match="allowed: mask, edges"):
        parse_scales("mask=1,edge=0.5", ["mask", "edges"], "--conditioning-scale")


class _Linear(torch.nn.Module):
    """A stand-in network whose output is a known function of each condition, to check the guidance formula."""

    def forward(self, x, t, cond, scale=1.0):
        out = x * 0.5
        for k, w in (("mask", 1.0), ("edges", 3.0)):
            if cond.maps.get(k) is not None:
                out = out + w * cond.maps[k].mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)
        return out + 7.0 * cond.attributes.sum(1).view(-1, 1, 1, 1) ** 2


def test_guidance_per_condition_and_attribute():
    x, t, mask, edges, attrs = _inputs(3)
    cond = Conditions({"mask": mask, "edges": edges}, attrs)
    f = _Linear()
    assert guidance_terms(cond, {"mask": 1.0}, 1.0) == []  # a scale of 1 costs no pass
    from maskray.diffusion.sampling import _guided

    terms = guidance_terms(cond, {"mask": 2.0, "edges": 3.0}, attribute_guidance=4.0)
    got = _guided(f, x, t, cond, terms, 1.0)
    full = f(x, t, cond)
    want = full + 1.0 * (full - f(x, t, cond.without("mask"))) + 2.0 * (full - f(x, t, cond.without("edges"))) \
        + 3.0 * (full - f(x, t, cond.without("attributes")))
    assert torch.allclose(got, want, atol=1e-5)
    # one term is the usual classifier-free guidance u + g (c - u)
    one = _guided(f, x, t, cond, guidance_terms(cond, 2.5), 1.0)
    u = f(x, t, cond.without(None))
    assert torch.allclose(one, u + 2.5 * (full - u), atol=1e-5)
    with pytest.raises(MaskrayError, match="unknown condition"):
        guidance_terms(cond, {"depth": 2.0})


def _sampler(model, cond):
    """``run(**kw)``: 3 DDIM steps of ``model`` for ``cond`` from seeds 1 and 2, with the sampler options ``kw``."""
    sched = make_scheduler("ddim", dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                        prediction_type="v_prediction", clip_sample=False))

    def run(**kw):
        gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
        return sample(model, sched, (2, 1, 32, 32), gens, cond=cond, num_steps=3, precision="no", **kw)
    return run


def test_guidance_changes_samples(nets):
    model, _ = nets
    _, _, mask, edges, attrs = _inputs(4)
    cond = Conditions({"mask": mask, "edges": edges}, attrs)
    run = _sampler(model, cond)

    plain = run()
    assert (run(guidance_scale={"edges": 3.0}) - plain).abs().max() > 1e-3
    assert (run(attribute_guidance=3.0) - plain).abs().max() > 1e-3
    assert torch.equal(run(guidance_scale={"mask": 1.0}, attribute_guidance=1.0), plain)


def test_lesion_guidance_steers_away_from_lesions_over_the_lungs(nets):
    lab = torch.tensor([[0, 1, 1, 2]])  # background, lung, lung, nodule
    mask = one_hot(lab[None], [1, 2])  # channels: lung, nodule
    neg = Conditions({"mask": mask}).with_lesion_over(lesion=1, region=0).maps["mask"]
    assert neg[0, 0].tolist() == [[0, 0, 0, 0]] and neg[0, 1].tolist() == [[0, 1, 1, 1]]  # lungs became nodule
    assert mask[0, 1].tolist() == [[0, 0, 0, 1]]  # the input is left as it was
    (g, ref), = guidance_terms(Conditions({"mask": mask}), 1.0, lesion_guidance=0.5, lesion_channels=(1, 0))
    assert g == 1.5 and torch.equal(ref.maps["mask"], neg)
    with pytest.raises(MaskrayError, match="nodule and lung channels"):
        guidance_terms(Conditions({"mask": mask}), 1.0, lesion_guidance=0.5)

    model, _ = nets
    _, _, m, edges, attrs = _inputs(5)
    cond = Conditions({"mask": m, "edges": edges}, attrs)
    run = _sampler(model, cond)

    plain = run()
    assert torch.equal(run(lesion_guidance=0.0, lesion_channels=(1, 0)), plain)  # off: the same pixels
    assert (run(lesion_guidance=2.0, lesion_channels=(1, 0)) - plain).abs().max() > 1e-3


def test_lesion_guidance_needs_nodule_and_lung_labels():
    card = ModelCard(stage="controlnet", image_size=32, labels={"lung": 1, "nodule": 2}, unet_config={},
                     diffusion={}, scheduler_config={}, step=0, unet_sha256="x", controlnet_sha256="y",
                     conditions={"mask": {"channels": 2}})
    assert MaskModel(None, card).lesion_channels == (1, 0)
    assert MaskModel(None, card).sampler_settings("ddim", 2, "1", lesion_guidance=1.0).lesion_guidance == 1.0
    with pytest.raises(MaskrayError, match="must be 0"):
        MaskModel(None, card).sampler_settings("ddim", 2, "1", lesion_guidance=-1.0)
    lungs = ModelCard(**{**card.__dict__, "labels": {"lung": 1}})
    with pytest.raises(MaskrayError, match="'nodule' and 'lung' labels"):
        MaskModel(None, lungs).sampler_settings("ddim", 2, "1", lesion_guidance=1.0)


def test_conditions_and_attributes_dropped_independently():
    maker = ConditionMaker(("mask", "edges"), [1, 2], EdgeConfig(), VOCAB, {f"c{i}": {"sex": "F", "age": "20-40"}
                                                                           for i in range(400)})
    lab = torch.randint(0, 3, (400, 16, 16))
    lab[:, 4:8, 4:8] = 1
    img = torch.rand(400, 1, 16, 16) * 2 - 1
    cond = maker.make(lab, img, [f"c{i}" for i in range(400)])
    dropped = maker.drop(cond, 0.5, torch.Generator().manual_seed(0))
    kept = {k: dropped.maps[k].flatten(1).abs().sum(1) > 0 for k in ("mask", "edges")}
    sex = dropped.attributes[:, :2].sum(1) > 0
    age = dropped.attributes[:, 2:].sum(1) > 0
    for k in ("mask", "edges"):
        assert 0.4 < kept[k].float().mean() < 0.6  # each map dropped about half the time
    for a in (sex, age):  # an attribute is kept when neither the whole vector nor its own block is dropped
        assert 0.15 < a.float().mean() < 0.35
    for a, b in ((kept["mask"], kept["edges"]), (sex, age), (kept["mask"], sex)):
        assert (a & ~b).any() and (b & ~a).any()  # not dropped together
    both = drop_attributes(cond.attributes, VOCAB, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(both, cond.attributes)


def test_attribute_requests_checked():
    assert parse_request("sex=F,age=60-80", VOCAB) == {"sex": "F", "age": "60-80"}
    with pytest.raises(MaskrayError, match="unknown value '60-70' for attribute 'age' .allowed: 20-40, 40-60, 60-80"):
        parse_request("sex=F,age=60-70", VOCAB)
    with pytest.raises(MaskrayError, match="unknown attribute 'finding' .allowed: sex, age"):
        parse_request("finding=tb", VOCAB)
    with pytest.raises(MaskrayError, match="NAME=VALUE"):
        parse_request("sex", VOCAB)
    assert encode([{"sex": "M"}, None], VOCAB).tolist() == [[0, 1, 0, 0, 0], [0, 0, 0, 0, 0]]


def test_edge_maps_follow_the_image_and_edge_f1():
    x = -torch.ones(2, 1, 32, 32)
    x[0, :, 8:24, 8:24] = 1
    x[1, :, 4:12, 14:30] = 1
    e = edge_map(x, EdgeConfig(sigma=1.0, low_threshold=0.1, high_threshold=0.2, use_quantiles=False))
    assert e.shape == (2, 1, 32, 32) and set(e.unique().tolist()) <= {0.0, 1.0}
    assert e[0, 0, 8:24, 7:10].sum() > 5 and e[0, 0, 14:18, 14:18].sum() == 0  # on the square's border, not inside
    a, b = e[0, 0].bool().numpy(), e[1, 0].bool().numpy()
    assert edge_f1(a, a) == 1.0 and edge_f1(a, b) < 0.5
    shifted = np.roll(a, 1, axis=1)
    assert edge_f1(shifted, a) == 1.0 and edge_f1(shifted, a, tol=0) < 0.9  # the 1-pixel tolerance


# ------------------------------------------------------------------------------------------- attributes at import
def _source(tmp_path, n=3):
    for i in range(n):
        (tmp_path / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (16, 16), dtype=np.uint8)).save(
            tmp_path / "img" / f"p{i}.png")
    return tmp_path / "img"


def _csv(tmp_path, text):
    p = tmp_path / "attrs.csv"
    p.write_text(text)
    return p


def test_import_records_attributes_with_age_bands(tmp_path):
    img = _source(tmp_path)
    csv = _csv(tmp_path, "file,sex,age,site\np0.png,F,63,A\np1.png,M,41.5,B\np2,F,70,A\n")
    import_folder(ImportConfig(out=tmp_path / "out", images=img, image_size=16, workers=1, attributes_csv=csv,
                               attribute_columns=("sex", "age"), attribute_bins="age=10"), progress=False)
    rec = json.loads((tmp_path / "out" / "cases.json").read_text())
    assert rec["p0"]["attributes"] == {"sex": "F", "age": "60-70"}
    assert rec["p1"]["attributes"] == {"sex": "M", "age": "40-50"} and rec["p2"]["attributes"]["age"] == "70-80"


@pytest.mark.parametrize("text, cols, bins, message", [
    ("file,sex\np0.png,F\n", ("sex", "age"), None, r"missing column\(s\) \['age'\]"),
    ("file,sex\np0.png,F\np9.png,M\n", ("sex",), None, "row 3 names 'p9.png', which is not among the imported"),
    ("file,sex\np0.png,F\np0.png,M\n", ("sex",), None, "row 3 repeats 'p0.png'"),
    ("file,sex\np0.png,\n", ("sex",), None, "row 2 has no value in column 'sex'"),
    ("file,age\np0.png,sixty\n", ("age",), "age=10", "row 2 column 'age' has 'sixty'; a number is needed"),
    ("file,sex\np0.png,F\n", ("sex",), "age=10", "not in --attribute-columns"),
    ("file,sex\np0.png,F\n", ("sex",), "age=ten", "not NAME=WIDTH"),
])
def test_malformed_attribute_csv_is_one_line_and_writes_nothing(tmp_path, text, cols, bins, message):
    img = _source(tmp_path)
    with pytest.raises(MaskrayError, match=message) as err:
        import_folder(ImportConfig(out=tmp_path / "out", images=img, image_size=16, workers=1,
                                   attributes_csv=_csv(tmp_path, text), attribute_columns=cols,
                                   attribute_bins=bins), progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_phantom_attributes_vary_the_anatomy(tmp_path):
    from maskray.data.phantom_body import Grid, project, sample_anatomy
    from maskray.data.phantom_attributes import with_attributes

    a = sample_anatomy(np.random.default_rng(0))
    g = Grid.make(64, 400.0, 0.0)

    def scene(sex, age):
        return project(with_attributes(a, {"sex": sex, "age": age}), g)

    f, m = scene("F", "40-60"), scene("M", "40-60")
    assert (m.P > 0.5).sum() > (f.P > 0.5).sum() and m.lung.sum() > f.lung.sum()  # a larger body and lungs
    young, old = scene("F", "20-40"), scene("F", "60-80")
    assert old.heart.sum() > young.heart.sum()  # a larger heart
    ribs = young.rib & ~young.heart & ~old.heart
    assert (young.P - old.P)[ribs].mean() > 0.02 and ((young.P - old.P)[ribs] >= 0).all()  # denser bone


# ------------------------------------------------------------------------------------------- end to end
def test_two_conditions_and_attributes_end_to_end(tmp_path):
    from maskray.data.phantom import PhantomConfig, make_phantom
    from maskray.evaluation.attributes import attribute_scores
    from maskray.evaluation.edges import edge_scores
    from maskray.evaluation.pairs import load_images
    from maskray.data.dataset import Dataset

    data = make_phantom(PhantomConfig(out=tmp_path / "ph", n=12, image_size=32, seed=0, workers=1, test_fraction=0.25),
                        progress=False)
    recorded = json.loads((data / "cases.json").read_text())
    assert {r["attributes"]["sex"] for r in recorded.values()} == {"F", "M"}
    train(TrainConfig(data=str(data), out=str(tmp_path / "base"), steps=2, attributes=("sex", "age"), **TINY), "base",
          progress=False)
    train(TrainConfig(data=str(data), out=str(tmp_path / "cn"), base=str(tmp_path / "base"), steps=2,
                      conditions=("mask", "edges"), **TINY), "controlnet", progress=False)
    card = ModelCard.load(tmp_path / "cn" / "model")
    assert card.condition_names == ["mask", "edges"] and card.vocabulary["sex"] == ("F", "M")
    assert card.conditions["edges"]["detector"] == "skimage.feature.canny" and card.conditions["edges"]["sha256"]
    model, _ = load_model(tmp_path / "cn")
    assert isinstance(model.controlnet, ControlNetSet) and list(model.controlnet.nets) == ["mask", "edges"]

    kw = dict(model=str(tmp_path / "cn"), edges_from=str(data), split="test", samples_per_mask=2, steps=2,
              batch_size=4, precision="no")
    out = generate(GenerateConfig(out=str(tmp_path / "g"), attributes="sex=M", attribute_guidance=2.0,
                                  conditioning_scale="mask=1,edges=0.5", **kw), progress=False)
    entry = next(iter(json.loads((out / "manifest.json").read_text())["cases"].values()))
    assert entry["attributes"] == {"sex": "M"} and entry["edges_from"] == entry["source_case"]
    with pytest.raises(MaskrayError, match="allowed: F, M"):
        generate(GenerateConfig(out=str(tmp_path / "bad"), attributes="sex=X", **kw), progress=False)

    real, syn = Dataset(data), Dataset(out)
    tr, te, sids = real.case_ids("train"), real.case_ids("test"), sorted(syn.cases)
    xs = load_images(syn, sids, 32)
    scores = attribute_scores(real, syn, tr, te, load_images(real, tr, 32), load_images(real, te, 32), sids, xs)
    assert scores["sex"]["n_generated"] == len(sids) and 0 <= scores["sex"]["generated_accuracy"] <= 1
    edges = edge_scores(real, syn, sids, xs)
    assert edges["n_cases"] == len(sids) and 0 <= edges["edge_f1"] <= 1 and edges["texture_std_between_samples"] > 0


def test_generate_refuses_guidance_on_what_it_does_not_give(tmp_path):
    from maskray.pipelines.generation_conditions import GenerationConditions

    card = ModelCard(stage="controlnet", image_size=32, labels={"lung": 1}, unet_config={}, diffusion={},
                     scheduler_config={}, step=0, unet_sha256="x", controlnet_sha256="y",
                     conditions={"mask": {"channels": 1}, "edges": EdgeConfig().to_card()},
                     attributes={k: list(v) for k, v in VOCAB.items()})
    model = MaskModel(None, card)
    with pytest.raises(MaskrayError, match="edges need --edges-from"):
        model.sampler_settings("ddim", 2, "edges=2")
    with pytest.raises(MaskrayError, match="--attribute-guidance needs --attributes"):
        model.sampler_settings("ddim", 2, "1", attribute_guidance=2.0)
    got = model.sampler_settings("ddim", 2, "mask=2", attribute_guidance=2.0, attributes_given=True)
    assert got.guidance_scale == {"mask": 2.0} and got.attribute_guidance == 2.0  # given: no error
    assert model.sampler_settings("ddim", 2, "edges=2", edges_given=True).guidance_scale == {"edges": 2.0}
    with pytest.raises(MaskrayError, match="unknown scheduler"):
        model.sampler_settings("nope", 2, "1")
    edges_only = ModelCard(**{**card.__dict__, "conditions": {"edges": EdgeConfig().to_card()}, "labels": {}})
    with pytest.raises(MaskrayError, match="give --edges-from REAL"):
        GenerationConditions(edges_only, [], None, None, {})


# ------------------------------------------------------------------------- ControlNets trained apart, joined
def _separate_runs(tmp_path, data, base_seed=0, tag=""):
    """A base and, on it, a mask run and an edges run (2 steps each), their joins moved off zero by hand."""
    from maskray.diffusion.store import save_model

    base = tmp_path / f"base{tag}"
    train(TrainConfig(data=str(data), out=str(base), steps=2, attributes=("sex",), **{**TINY, "seed": base_seed}),
          "base", progress=False)
    runs = {}
    for i, name in enumerate(("mask", "edges")):
        runs[name] = tmp_path / f"cn-{name}{tag}"
        train(TrainConfig(data=str(data), out=str(runs[name]), base=str(base), steps=2, conditions=(name,), **TINY),
              "controlnet", progress=False)
        model, card = load_model(runs[name])
        _unzero(model.controlnet, 10 + i)
        save_model(runs[name] / "model", model.unet, card, controlnet=model.controlnet)
    return runs


def test_joined_controlnets_equal_the_same_set_run_jointly(tmp_path):
    from maskray.cli import main
    from maskray.data.phantom import PhantomConfig, make_phantom

    data = make_phantom(PhantomConfig(out=tmp_path / "ph", n=8, image_size=32, seed=0, workers=1, test_fraction=0.25),
                        progress=False)
    runs = _separate_runs(tmp_path, data)
    assert main(["train", "join", "--controlnet", f"mask={runs['mask']}", "--controlnet", f"edges={runs['edges']}",
                 "--out", str(tmp_path / "joined")]) == 0
    joined, card = load_model(tmp_path / "joined")
    assert card.condition_names == ["mask", "edges"] and card.labels and card.vocabulary == {"sex": ("F", "M")}
    mask_model, _ = load_model(runs["mask"])
    edges_model, _ = load_model(runs["edges"])
    same = ControlledUNet(mask_model.unet, ControlNetSet({"mask": mask_model.controlnet,
                                                         "edges": edges_model.controlnet.nets["edges"]})).eval()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 1, 32, 32, generator=g), torch.full((2,), 400)
    cond = Conditions({"mask": (torch.rand(2, 3, 32, 32, generator=g) > 0.5).float(),
                       "edges": (torch.rand(2, 1, 32, 32, generator=g) > 0.8).float()}, encode([{"sex": "F"}] * 2,
                                                                                              {"sex": ("F", "M")}))
    with torch.no_grad():
        for scale in (1.0, {"mask": 1.0, "edges": 0.5}, {"mask": 1.0, "edges": 0.0}):
            assert torch.equal(joined(x, t, cond, scale), same(x, t, cond, scale))
        assert (joined(x, t, cond) - joined(x, t, cond, {"mask": 1.0, "edges": 0.0})).abs().max() > 1e-4
    kw = dict(masks=str(data), split="test", steps=2, batch_size=4, precision="no")
    alone = generate(GenerateConfig(model=str(runs["mask"]), out=str(tmp_path / "g-mask"), **kw), progress=False)
    both = generate(GenerateConfig(model=str(tmp_path / "joined"), out=str(tmp_path / "g-joined"), edges_from=str(data),
                                   conditioning_scale="mask=1,edges=0", **kw), progress=False)
    for c in json.loads((alone / "manifest.json").read_text())["cases"]:
        a, b = (np.asarray(Image.open(next((o / "imagesTr").glob(f"{c}_*.png")))) for o in (alone, both))
        assert np.array_equal(a, b)  # edges scaled to 0: the joined model is the mask run


def test_join_refuses_controlnets_of_another_base(tmp_path):
    from maskray.cli import main
    from maskray.data.phantom import PhantomConfig, make_phantom
    from maskray.diffusion.join import join_models, parse_sources

    data = make_phantom(PhantomConfig(out=tmp_path / "ph", n=6, image_size=32, seed=0, workers=1), progress=False)
    runs = _separate_runs(tmp_path, data)
    other = _separate_runs(tmp_path, data, base_seed=1, tag="-other")
    with pytest.raises(MaskrayError, match="trained on another base") as e:
        join_models({"mask": runs["mask"], "edges": other["edges"]}, tmp_path / "out")
    assert str(other["edges"]) in str(e.value) and "\n" not in str(e.value) and not (tmp_path / "out").exists()
    with pytest.raises(MaskrayError, match="follows mask, not 'edges'"):
        join_models({"mask": runs["mask"], "edges": runs["mask"]}, tmp_path / "out")
    with pytest.raises(MaskrayError, match="given twice"):
        parse_sources([f"mask={runs['mask']}", f"mask={runs['edges']}"])
    assert main(["train", "join", "--controlnet", f"mask={runs['mask']}", "--out", str(tmp_path / "o")]) == 2


def test_attribute_chance_follows_the_requests_not_the_training_majority():
    from maskray.evaluation.attributes import chance_level

    train = ["F"] + ["M"] * 3  # P_train(F) = 0.25; the majority share is 0.75
    assert chance_level(train, ["F"] * 8) == (pytest.approx(0.25), {"F": 0.25})
    chance, by_value = chance_level(train, ["F", "M"])
    assert chance == pytest.approx(0.5 * 0.25 + 0.5 * 0.75) and by_value == {"F": 0.25, "M": 0.75}
    assert chance_level(train, ["X"]) == (0.0, {"X": 0.0}) and chance_level(train, []) == (None, {})
