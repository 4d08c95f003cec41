"""`bachvid analyze` (layer x step mask IoU and match accuracy against the toy world's truth) and the
attention-mass probe of the diagnosis, at tiny sizes."""

import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from bachvid.method.attention import injected_attention
from bachvid.method.config import BachVidConfig
from bachvid.method.controller import AttentionCall, Controller, VideoState
from bachvid.method.identity import CachedIdentity
from bachvid.method.plan import StepPlan, full_copy_injection
from bachvid.models import DEFAULT_MODEL_DIR
from bachvid.toy import analyze


@pytest.fixture(scope="module")
def toy():
    from bachvid.pipeline import BachVidPipeline

    pipe = BachVidPipeline.from_pretrained()
    return pipe, replace(pipe.default_settings(), num_inference_steps=4)


@pytest.fixture(scope="module")
def analysis(toy, tmp_path_factory):
    pipe, settings = toy
    out = tmp_path_factory.mktemp("analyze")
    from bachvid import cli

    assert cli.main(["analyze", "--videos", "2", "--steps", "4", "--fractions", "0,0.5", "--seed", "3",
                     "--out", str(out)]) == 0
    return out, json.loads((out / "report.json").read_text())


@pytest.mark.slow
def test_heatmaps_and_csvs_have_a_row_per_step_and_a_column_per_layer(analysis):
    out, report = analysis
    steps, layers = report["candidate_steps"], report["layers"]
    assert steps == [0, 2] and layers == list(range(8)) and report["videos"] == 2 and report["stories"] == 1
    for name in ("mask_iou_after_background", "mask_iou_character", "match_accuracy", "match_kept",
                 "match_kept_accuracy"):
        lines = (out / f"{name}.csv").read_text().splitlines()
        assert lines[0] == "step," + ",".join(f"layer{l}" for l in layers)
        assert [int(line.split(",")[0]) for line in lines[1:]] == steps
        values = [float(v) for line in lines[1:] for v in line.split(",")[1:] if v]
        assert len(values) == len(steps) * len(layers) and all(0 <= v <= 1 for v in values)
        from PIL import Image

        assert Image.open(out / f"{name}.png").size[0] > 200
    for span in ("after_background", "character"):  # the ranking table: same rows and columns
        lines = (out / f"mask_ranking_{span}.csv").read_text().splitlines()
        assert lines[0] == "step," + ",".join(f"layer{l}" for l in layers) and len(lines) == 1 + len(steps)
    best_ranking = max(v for table in report["mask_ranking"].values() for row in table.values() for v in row.values())
    assert best_ranking > 0.75  # the shipped model's attention ranks its character far above chance (0.96 here)
    assert report["best_mask_ranking"] > 0.75
    best = report["best_mask"]
    single = max(v for row in report["mask_iou"][best["span"]].values() for v in row.values())
    assert best["iou"] >= single - 1e-9 and best["step"] in steps
    match = report["best_match"]
    assert set(report["config"]) == {"mask_layers", "tau_mask", "mask_foreground", "mask_rule", "match_layers",
                                     "tau_match"}
    assert report["config"]["mask_rule"] == report["mask_rule"] == "fg_over_bg"  # the paper's, unless --mask-rule
    assert report["config"]["match_layers"] == match["layers"] and match["step"] in steps


def test_calibrate_reads_its_choice_from_an_analysis(analysis, tmp_path):
    from bachvid.pipeline import BachVidPipeline
    from bachvid.toy import calibrate

    out, report = analysis
    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    assert calibrate.main(["--model", str(folder), "--analysis", str(out), "--write-defaults",
                           "--set", "foreground_injection=false", "--set", "vital_layers=[1, 2]",
                           "--shot-seeds", "identity"]) == 0
    pipe = BachVidPipeline.from_pretrained(folder)
    config = pipe.default_config()
    assert config.foreground_injection is False and config.vital_layers == (1, 2)
    assert pipe.default_settings().shot_seeds == "identity"
    assert list(config.mask_layers) == report["best_mask"]["layers"]
    assert config.mask_rule == report["mask_rule"]
    assert list(config.match_layers) == report["best_match"]["layers"]
    assert round(config.tau_match * report["steps"]) == report["best_match"]["step"]
    for bad in (["--set", "no_such_knob=1"], ["--set", "tau_mask=7"]):  # refused, nothing written
        before = (folder / "bachvid.json").read_text()
        with pytest.raises(SystemExit):
            calibrate.main(["--model", str(folder), "--analysis", str(out), "--write-defaults", *bad])
        assert (folder / "bachvid.json").read_text() == before


@pytest.mark.slow
def test_match_accuracy_is_one_for_the_identity_itself_and_low_when_shuffled(toy):
    pipe, settings = toy
    steps = analyze.candidate_steps((0.0, 0.5), settings.num_inference_steps)
    identity = analyze.record(pipe, ("meadow", "cat", "stand"), 11, steps, settings)
    shot = analyze.record(pipe, ("meadow", "cat", "stand"), 11, steps, settings)  # same prompt and seed
    assert shot["truth"].sum() >= 20
    pair = {"identity": identity, "shot": shot}
    for step in steps:
        for layer in range(pipe.backbone.num_layers):
            scores = analyze.pair_match(pair, step, [layer])
            assert scores["match_accuracy"] == 1.0 and scores["match_kept"] == 1.0
    # the same matches, shuffled among the foreground tokens: mostly wrong
    fg = np.flatnonzero(shot["truth"].reshape(-1))
    index = np.arange(shot["truth"].size)
    index[fg] = np.random.default_rng(0).permutation(fg)
    shuffled = analyze.match_scores(shot, identity, index, np.ones(index.size))
    assert shuffled["match_accuracy"] < 0.7
    assert analyze.chance_matches([pair], draws=3)["random_fg"] < 0.7


def _doubled_keys_call(bias: float, heads=2, tokens=12, text=3, dim=8):
    """One attention call in which every query also sees an exact copy of every own key (text too),
    at its own position, from an identity record holding this very call's keys and values."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, heads, tokens, dim) for _ in range(3))
    record = CachedIdentity(text_length=text)
    record.keep_key_value(0, 0, k, v)
    injection = replace(full_copy_injection(tokens, text), bias=bias)
    probe = analyze.MassProbe(shared_background=False)  # one group, reported under its kind, "copy"
    state = VideoState(plan=StepPlan(step=0, inject_layers=frozenset({0}), injections=(injection,)), source=record,
                       probe=probe(None))
    controller = Controller([state], branches=1)
    out = controller.attend(AttentionCall(0, q, k, v, text, None))
    return probe, out, (q, k, v)


@pytest.mark.parametrize("bias", [0.0, 1.0, 2.5])
def test_mass_on_duplicated_keys_is_a_half_and_grows_with_the_bias(bias):
    probe, out, (q, k, v) = _doubled_keys_call(bias)
    mass = probe.table("copy")[0][0]
    assert mass == pytest.approx(math.exp(bias) / (1 + math.exp(bias)), abs=1e-5)  # 0.5 without a bias
    if bias == 0.0:  # duplicated keys leave the attention output unchanged
        assert torch.allclose(out, injected_attention(q, k, v, None), atol=1e-5)


def test_injected_spread_tells_a_copy_by_place_from_a_uniform_average():
    """Queries that attend to the injected key at their own place read distance 0 and own share 1;
    queries that attend uniformly read exactly the uniform values; text keys and queries have no place."""
    from bachvid.method.attention import KeyGroup

    torch.manual_seed(0)
    grid, text, heads, dim = (2, 3, 4), 2, 2, 16
    tokens = text + 24
    keys = torch.nn.functional.normalize(torch.randn(heads, tokens, dim), dim=-1) * 4  # own key: the largest dot
    everything = torch.arange(tokens)
    group = KeyGroup(everything, keys, keys, sources=everything)  # text included, as full_copy_injection does
    by_place = analyze.injected_spread(keys * 50, keys, group, grid)
    assert by_place["distance"] < 0.01 and by_place["own_place"] > 0.99
    uniform = analyze.injected_spread(torch.zeros(heads, tokens, dim), keys, group, grid)
    assert uniform["distance"] == pytest.approx(uniform["distance_uniform"], abs=1e-6)
    assert uniform["own_place"] == pytest.approx(uniform["own_place_uniform"], abs=1e-6)
    assert uniform["own_place_uniform"] == pytest.approx(2 / 24)  # its own place in each of the 2 frames
    assert uniform["distance_uniform"] > 1
    shifted = KeyGroup(everything[text:], keys[:, text:], keys[:, text:], sources=(everything[text:] - text + 1) % 24 + text)
    one_over = analyze.injected_spread(keys * 50, keys, shifted, grid)  # the key a query likes sits one token on
    assert one_over["own_place"] < 0.2 and 0.9 < one_over["distance"] < 3.1
    assert analyze.injected_spread(keys, keys, KeyGroup(everything, keys, keys), grid) is None  # no sources


def test_mass_probe_reports_per_kind_when_one_kind_comes_in_several_groups():
    """A windowed background injection comes as one group per tile: the background's mass is the mean
    over all of its queries, and the foreground group after the tiles is still read as the foreground."""
    from bachvid.method.attention import KeyGroup

    torch.manual_seed(0)
    heads, tokens, dim = 2, 10, 8
    query, key = torch.randn(heads, tokens, dim), torch.randn(heads, tokens, dim)
    extra = torch.randn(heads, 3, dim)
    tiles = [KeyGroup(torch.tensor([0, 1, 2]), extra[:, :1] * 3, extra[:, :1], kind="background"),
             KeyGroup(torch.tensor([3]), extra[:, 1:2], extra[:, 1:2], kind="background")]
    fg = KeyGroup(torch.tensor([4, 5]), extra[:, 2:], extra[:, 2:], bias=2.0, kind="foreground")
    masses = analyze.injected_mass(query, key, [*tiles, fg])
    probe = analyze.MassProbe(shared_background=True)
    probe(None)(0, 0, query, key, [*tiles, fg])
    assert probe.table("background")[0][0] == pytest.approx((3 * masses[0] + masses[1]) / 4, rel=1e-6)
    assert probe.table("foreground")[0][0] == pytest.approx(masses[2], rel=1e-6)
    assert probe.share(0, "background") == pytest.approx(1 / 11, rel=1e-6)


@pytest.mark.slow
def test_mass_probe_on_the_toy_model_grows_with_injected_logit_bias(toy):
    from bachvid.modes import Instruments
    from conftest import make_story

    pipe, settings = toy
    story = make_story(("stands still", "walks to the left"))
    means = []
    for bias in (0.0, 1.0, 2.0):
        config = pipe.default_config(injected_logit_bias=bias)
        probe = analyze.MassProbe(config.shared_background)
        list(pipe.generate(story, settings, config, identity_mode="cache", progress=False, output_type="latent",
                           instruments=Instruments(probe=probe)))
        table = probe.table("background")
        values = [v for row in table.values() for v in row.values()]
        assert set(table) and all(0 < v < 1 for v in values)
        assert {l for row in table.values() for l in row} == set(config.vital_layers)
        means.append(float(np.mean(values)))
    assert means[0] < means[1] < means[2], means


def test_held_out_pairs_use_held_out_combinations_and_the_story_seed_rule():
    from bachvid.toy import world

    _, held_out = world.split_combinations()
    pairs = analyze.held_out_pairs(6, seed=1)
    assert pairs == analyze.held_out_pairs(6, seed=1)
    for p in pairs:
        b, c, a = p["shot"]
        assert p["identity"] == (b, c, "stand") and a != "stand" and p["shot_seed"] == p["identity_seed"] + 1
        assert any(h[:2] == (b, c) for h in held_out)
    assert BachVidConfig().tau_match == 0.2  # the default the report compares with


def test_ranking_auc_says_how_well_a_score_orders_the_character_whatever_the_threshold():
    truth = np.zeros((2, 4, 4), bool)
    truth[:, 1:3, 1:3] = True
    score = truth * 1.0 + 0.01 * np.arange(32).reshape(2, 4, 4)  # any threshold between the groups works
    assert analyze.ranking_auc(score, truth) == 1.0
    assert analyze.ranking_auc(-score, truth) == 0.0
    assert analyze.ranking_auc(np.ones_like(score), truth) == 0.5  # ties count half
    half = np.where(truth, 1.0, 0.0)
    half[0][truth[0]] = -1.0  # the character scores high in one frame and low in the other
    assert analyze.ranking_auc(half, truth) == pytest.approx(0.5)
    assert analyze.ranking_auc(score, np.zeros_like(truth)) is None
