"""The results benchmark (bachvid.toy.results), its oracle readings and `bachvid evaluate`, at small sizes."""

import json
from dataclasses import replace

import numpy as np
import pytest

from bachvid.toy import oracle, results, shot_metrics, world
from bachvid.toy.evaluate import score_clip
from bachvid.toy.stats import paired_bootstrap

# Statistics ----------------------------------------------------------------------------------------------


def _paired(rng, n, shift, noise=1.0):
    baseline = rng.normal(20, 3, n)  # stories differ a lot; the pairing removes that
    return baseline + shift + rng.normal(0, noise, n), baseline


def test_bootstrap_ci_covers_the_true_difference():
    rng = np.random.default_rng(1)
    shift, trials, covered = 0.4, 150, 0
    for t in range(trials):
        values, baseline = _paired(rng, 32, shift)
        ci = paired_bootstrap(values, baseline, resamples=500, seed=t)
        covered += ci["low"] <= shift <= ci["high"]
        assert ci["n"] == 32
    assert 0.88 <= covered / trials <= 0.99  # a 95% interval


def test_bootstrap_excludes_zero_for_a_large_shift_and_not_for_none():
    rng = np.random.default_rng(2)
    values, baseline = _paired(rng, 32, 3.0)
    ci = paired_bootstrap(values, baseline, resamples=1000)
    assert ci["low"] > 0 and ci["significant"]
    assert abs(ci["mean"] - 3.0) < 0.6
    null = [paired_bootstrap(*_paired(rng, 32, 0.0), resamples=500, seed=k)["significant"] for k in range(60)]
    assert np.mean(null) <= 0.15


def test_bootstrap_pairs_only_stories_with_both_values():
    ci = paired_bootstrap([1.0, np.nan, 3.0, 5.0], [0.0, 1.0, np.nan, 4.0], resamples=200)
    assert ci["n"] == 2 and ci["mean"] == pytest.approx(1.0)
    assert paired_bootstrap([np.nan], [1.0]) is None


def test_bootstrap_is_reproducible():
    a, b = _paired(np.random.default_rng(3), 20, 1.0)
    assert paired_bootstrap(a, b, seed=5) == paired_bootstrap(a, b, seed=5)


# Stories ---------------------------------------------------------------------------------------------------


def test_benchmark_stories_are_fixed_mixed_and_use_their_own_seeds():
    stories = results.benchmark_stories(32)
    assert stories == results.benchmark_stories(32)
    assert sum(s.shared for s in stories) == 16
    assert len({(s.background, s.character) for s in stories}) == 16  # every pair, shared and switched
    for s in stories:
        assert len(s.actions) == 3 and len(set(s.actions)) == 3 and "stand" not in s.actions
        assert results.SEED_LOW <= s.seed < results.SEED_HIGH  # calibrate/consistency/quality draw < 2**20
        if s.shared:
            assert set(s.shot_backgrounds) == {s.background}
        else:
            assert s.background not in s.shot_backgrounds
        story = s.story()
        assert story.shared_background == s.shared and len(story.shots) == 3
    assert {a for s in stories for a in s.actions} == set(results.MOVING)


# Oracle readings -------------------------------------------------------------------------------------------


def _box(x0, y0, w=24, h=32, frames=17):
    m = np.zeros((frames, 64, 64), bool)
    m[:, y0:y0 + h, x0:x0 + w] = True
    return m


def test_oracle_matches_a_shifted_character_to_the_same_body_tokens():
    identity, shot = _box(8, 24), _box(32, 16)  # 3 tokens right, 1 token up
    identity_fg = oracle.token_mask(identity)
    index, valid = oracle.body_matches(shot, identity, identity_fg)
    grid = identity_fg.shape
    tokens = np.flatnonzero(oracle.token_mask(shot).reshape(-1))
    assert len(tokens) > 20 and valid[tokens].all()
    f, y, x = np.unravel_index(tokens, grid)
    f2, y2, x2 = np.unravel_index(index[tokens], grid)
    assert (np.abs(y2 - (y + 1)) <= 1).all() and (np.abs(x2 - (x - 3)) <= 1).all()
    assert identity_fg.reshape(-1)[index[tokens]].all()  # matches land on the identity's foreground
    assert oracle.match_accuracy(index, tokens, shot, identity, grid) == 1.0
    wrong = index.copy()
    wrong[tokens] = index[tokens[::-1]]  # matches mirrored through the character score low
    assert oracle.match_accuracy(wrong, tokens, shot, identity, grid) < 0.5


def _centre_coords(clip, grid):
    """Truth: the world's body coordinates (u, v) at each token's centre pixel, per latent frame."""
    lf, h, w = grid
    frames = [0] + [min(1 + 4 * k + 2, len(clip.frames) - 1) for k in range(lf - 1)]
    centres = (np.arange(h) * 8 + 4)
    return clip.coords[frames][:, centres][:, :, centres]


@pytest.mark.parametrize("spec", ["v1", "v2"])
def test_oracle_matches_follow_true_body_points_on_rendered_clips(spec):
    identity = world.render_clip("meadow", "robot", "stand", seed=11, world=spec)
    for action, seed in (("left", 12), ("right", 13), ("jump", 14)):
        shot = world.render_clip("meadow", "robot", action, seed=seed, world=spec)
        identity_fg = oracle.token_mask(identity.mask)
        index, valid = oracle.body_matches(shot.mask, identity.mask, identity_fg)
        grid = identity_fg.shape
        shot_uv, id_uv = _centre_coords(shot, grid), _centre_coords(identity, grid)
        tokens = [t for t in np.flatnonzero(oracle.token_mask(shot.mask).reshape(-1))
                  if np.isfinite(shot_uv.reshape(-1, 2)[t]).all()]
        assert len(tokens) > 30
        right = []
        for t in tokens:
            f2, y2, x2 = np.unravel_index(index[t], grid)
            d = ((id_uv[f2] - shot_uv.reshape(-1, 2)[t]) ** 2).sum(-1)
            y, x = np.unravel_index(np.nanargmin(d), d.shape)
            right.append(valid[t] and max(abs(y - y2), abs(x - x2)) <= 1)
        assert np.mean(right) >= 0.95, action


# Metrics -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["v1", "v2"])
def test_belt_colour_is_read_as_the_world_draws_it(spec):
    rng = np.random.default_rng(4)
    combos = world.all_combinations()
    names = set()
    for _ in range(24):
        clip = world.render_clip(*combos[rng.integers(len(combos))], seed=int(rng.integers(1 << 20)), world=spec)
        band = (clip.coords[..., 1] > 0.51) & (clip.coords[..., 1] < 0.57) & clip.mask
        colour = np.median(clip.frames[band], axis=0)
        truth = int(np.argmin(((np.array(shot_metrics.ACCESSORY_COLOURS) - colour) ** 2).sum(-1)))
        assert np.abs(np.array(shot_metrics.ACCESSORY_COLOURS[truth]) - colour).max() <= 1  # the world's table
        score = score_clip(clip.frames)
        read = shot_metrics.belt_colour(clip.frames, score.mask, score.character_kind)
        assert read is not None and np.abs(read - colour).max() <= 20
        assert shot_metrics.belt_name(read) == shot_metrics.ACCESSORY_NAMES[truth]
        names.add(truth)
    assert len(names) >= 3


@pytest.mark.parametrize("spec", ["v1", "v2"])
def test_belt_kept_tells_the_same_belt_from_another(spec):
    a = world.render_clip("meadow", "robot", "stand", seed=3, world=spec)
    ident = score_clip(a.frames)
    belt = shot_metrics.belt_colour(a.frames, ident.mask, ident.character_kind)
    kept, other = [], []
    for seed in range(4, 40):
        clip = world.render_clip("meadow", "robot", "left", seed=seed, world=spec)
        score = score_clip(clip.frames)
        same = shot_metrics.belt_name(shot_metrics.belt_colour(clip.frames, score.mask, score.character_kind)) == \
            shot_metrics.belt_name(belt)
        (kept if same else other).append(shot_metrics.compare(a.frames, clip.frames, "left", True, ident)["belt_kept"])
    assert kept and other and all(k == 1.0 for k in kept) and all(o == 0.0 for o in other)


@pytest.mark.parametrize("spec", ["v1", "v2"])
def test_compare_a_clip_with_itself_and_with_another_seed(spec):
    a = world.render_clip("desert", "cat", "stand", seed=3, world=spec)
    same = shot_metrics.compare(a.frames, a.frames, "stand", True)
    assert same["background_psnr"] > 60 and same["histogram_distance"] == pytest.approx(0)
    assert same["belt_kept"] == 1.0 and same["action_right"] == 1.0
    other = world.render_clip("desert", "cat", "left", seed=4, world=spec)
    diff = shot_metrics.compare(a.frames, other.frames, "left", True)
    assert diff["background_psnr"] < same["background_psnr"] and diff["action_right"] == 1.0
    switched = shot_metrics.compare(a.frames, other.frames, "jump", False)
    assert switched["background_psnr"] is None and switched["action_right"] == 0.0


def test_table_and_plot_from_records(tmp_path):
    stories = results.benchmark_stories(4, shots=2)
    rng = np.random.default_rng(0)
    records = []
    for s in stories:
        for c, shift in (("vanilla-own", 0.0), ("vanilla-idseed", 0.5), ("bachvid", 2.0), ("no-bg", 1.25),
                         ("oracle-masks", 2.5)):
            shots = [{"background_psnr": 20 + shift + rng.normal() if s.shared else None,
                      "histogram_distance": 0.1 - shift / 50, "belt_kept": float(shift > 1), "action_right": 1.0,
                      "seconds": 1.0 + shift} for _ in s.actions]
            records.append({"story": s.name, "condition": c, "spec": s.spec(), "shots": shots})
    summary = results.summarize(records, stories, ["vanilla-own", "vanilla-idseed", "bachvid", "no-bg",
                                                   "oracle-masks"], resamples=200)
    ours = summary["conditions"]["bachvid"]["metrics"]
    # what background injection adds: bachvid minus no-bg, paired (0.75 dB here, belt 1 - 1 = 0)
    adds = summary["conditions"]["no-bg"]["metrics"]
    assert adds["histogram_distance"]["part adds"]["mean"] == pytest.approx(-0.015)
    assert adds["belt_kept"]["part adds"]["mean"] == 0.0 and "part adds" not in ours["belt_kept"]
    # what true masks add: oracle-masks minus bachvid (the other way round)
    truth = summary["conditions"]["oracle-masks"]["metrics"]
    assert truth["histogram_distance"]["part adds"]["mean"] == pytest.approx(-0.01)
    assert ours["background_psnr"]["n"] == 2 and ours["histogram_distance"]["n"] == 4
    assert ours["belt_kept"]["vs vanilla-idseed"]["mean"] == pytest.approx(1.0)
    table = results.markdown_table(summary)
    assert table.count("\n| ") >= 3 and "vs identity's seed" in table and "**+1.000 [+1.000, +1.000]" not in table
    assert "| the shared background (its injection and its merge) | " in table and "**-0.015 [-0.015, -0.015]**" in table
    assert table.index("| the shared background") < table.index("| true masks instead of read ones | ")
    results.plot(summary, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000


# End to end on the shipped toy model ------------------------------------------------------------------------

CONDITIONS = "vanilla-own,vanilla-idseed,bachvid,oracle-both"


@pytest.mark.slow
def test_results_command_writes_everything_resumes_and_matches_the_pipeline(tmp_path, monkeypatch):
    from bachvid.modes import Instruments
    from bachvid.pipeline import BachVidPipeline

    out = tmp_path / "results"
    args = ["--stories", "2", "--shots", "1", "--steps", "4", "--out", str(out), "--conditions", CONDITIONS,
            "--batch", "2", "--resamples", "200", "--sheet-stories", "2"]
    assert results.main(args) == 0
    for name in ("table.md", "results.json", "plot.png", "sheet.png", "records.jsonl"):
        assert (out / name).is_file() and (out / name).stat().st_size > 100, name
    records = (out / "records.jsonl").read_text().splitlines()
    assert len(records) == 2 * 4
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["conditions"]) == set(CONDITIONS.split(","))
    assert summary["conditions"]["bachvid"]["metrics"]["histogram_distance"]["n"] == 2
    assert summary["conditions"]["oracle-both"]["attention_readings"]["shot_mask_iou"] is not None
    assert "BachVid (model's config), own seed per shot" in (out / "table.md").read_text()

    # Resume: nothing is made again.
    calls = []
    monkeypatch.setattr(results.Bench, "_chunk", lambda self, *a: calls.append(a) or 0)
    assert results.main(args) == 0
    assert calls == [] and (out / "records.jsonl").read_text().splitlines() == records
    # Rescoring from the saved videos gives the same metrics.
    stories = results.benchmark_stories(2, shots=1)
    assert results.rescore(out, stories) == 8
    again = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["shots"] for r in again] == [json.loads(line)["shots"] for line in records]

    # The batched benchmark gives the pipeline's videos (BachVid, and oracle readings through Instruments).
    pipe = BachVidPipeline.from_pretrained()
    settings = replace(pipe.default_settings(), num_inference_steps=4, shot_seeds="own")  # the "bachvid" row: own seeds
    bench = results.benchmark_stories(2, shots=1)[1]
    story = bench.story()
    s = settings.for_story(story)
    made = list(pipe.generate(story, s, pipe.default_config(), identity_mode="cache", progress=False))
    saved = np.load(out / "videos" / bench.name / "bachvid.npz")["frames"]
    assert np.abs(made[1].frames.astype(int) - saved[0].astype(int)).max() <= 2
    truth = oracle.TruthReadings(pipe, s)
    made = list(pipe.generate(story, s, pipe.default_config(), identity_mode="replay", progress=False,
                              instruments=Instruments(readings=truth)))
    saved = np.load(out / "videos" / bench.name / "oracle-both.npz")["frames"]
    assert np.abs(made[1].frames.astype(int) - saved[0].astype(int)).max() <= 2
    assert [e["role"] for e in truth.log] == ["identity", "shot"]


def test_results_refuses_unknown_conditions_and_other_stories(tmp_path, capsys):
    assert results.main(["--conditions", "bachvid,nope", "--out", str(tmp_path)]) == 2
    assert "unknown condition" in capsys.readouterr().err
    assert results.main(["--conditions", "bachvid", "--out", str(tmp_path)]) == 2  # no baseline


# bachvid evaluate ------------------------------------------------------------------------------------------------


def test_evaluate_refuses_a_folder_that_is_not_bachvid_output(tmp_path, capsys):
    from bachvid import cli

    assert cli.main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "x.txt").write_text("hi")
    assert cli.main(["evaluate", str(tmp_path)]) == 2
    assert "not bachvid output" in capsys.readouterr().err
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "manifest.json").write_text(json.dumps({"hello": 1}))
    assert cli.main(["evaluate", str(tmp_path)]) == 2
    assert "not a bachvid manifest" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_scores_a_generate_folder(tmp_path, capsys):
    from bachvid import cli

    story = tmp_path / "story.txt"
    story.write_text("a green meadow # a red robot # stands still\na green meadow # a red robot # jumps\n\n"
                     "a sandy desert # a cyan blob # stands still\na blue ocean # a cyan blob # walks to the left\n")
    out = tmp_path / "out"
    assert cli.main(["generate", str(story), "--out", str(out), "--steps", "4"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "story-000" in printed and "mean" in printed
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["summary"]["stories"] == 2 and evaluation["summary"]["shots"] == 2
    first, second = evaluation["stories"]
    assert first["shots"][0]["background_psnr"] is not None  # the identity's background was asked for
    assert second["shots"][0]["background_psnr"] is None  # switched background
    for story_eval in evaluation["stories"]:
        shot = story_eval["shots"][0]
        assert 0 <= shot["histogram_distance"] <= 1 and shot["action_right"] in (0.0, 1.0)
        assert shot["seconds"] is not None
    assert first["bachvid"] is True
    # One story's folder works too.
    assert cli.main(["evaluate", str(out / "story-000"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["stories"] == 1


def test_bachvid_on_the_identity_seed_is_the_pipeline_with_shots_on_that_seed(tmp_path):
    """... and so are the locks' rows, with the locks in the config (no-locks: both off); the table says
    what an option adds against the same run without it: the hard background lock against no-bg-lock,
    both locks against no-locks (the defaults hold the character lock and the agreement lock)."""
    from bachvid.pipeline import BachVidPipeline

    out = tmp_path / "results"
    args = ["--stories", "2", "--shots", "1", "--steps", "4", "--out", str(out), "--conditions",
            "vanilla-idseed,bachvid-idseed,no-locks,no-bg-lock,bg-lock,bg-agree,locks", "--batch", "2", "--resamples", "50",
            "--sheet-stories", "1"]
    assert results.main(args) == 0
    bench = results.benchmark_stories(2, shots=1)[0]
    assert bench.shared  # the lock acts on shared backgrounds only
    pipe = BachVidPipeline.from_pretrained()
    settings = replace(pipe.default_settings(), num_inference_steps=4)
    story = replace(bench.story(), shot_seeds="identity")
    hard = {"background_latents_until": results.BACKGROUND_LOCK, "background_latents_weight": 1.0,
            "background_lock_agreement": 0.0}
    both = {**hard, "character_latents_until": results.CHARACTER_LOCK}
    for condition, config in (("bachvid-idseed", pipe.default_config()),
                              ("bg-lock", pipe.default_config(**hard)),
                              ("no-bg-lock", pipe.default_config(background_latents_until=0.0)),
                              ("bg-agree", pipe.default_config(**dict(zip(
                                  ("background_latents_until", "background_latents_weight", "background_lock_agreement"),
                                  results.AGREEMENT_LOCK)))),
                              ("locks", pipe.default_config(**both)),
                              ("no-locks", pipe.default_config(background_latents_until=0.0,
                                                               character_latents_until=0.0))):
        made = list(pipe.generate(story, settings.for_story(story), config, identity_mode="cache", progress=False))
        assert made[1].seed == made[0].seed
        saved = np.load(out / "videos" / bench.name / f"{condition}.npz")["frames"]
        assert np.abs(made[1].frames.astype(int) - saved[0].astype(int)).max() <= 2, condition
    locked = np.load(out / "videos" / bench.name / "bg-lock.npz")["frames"]
    unlocked = np.load(out / "videos" / bench.name / "bachvid-idseed.npz")["frames"]
    assert np.abs(locked.astype(int) - unlocked.astype(int)).max() > 2
    # The defaults hold both locks, so bachvid-idseed is no reference for a lock.
    assert pipe.default_config().character_latents_until > 0 and pipe.default_config().background_latents_until > 0
    table = (out / "table.md").read_text()
    assert "| background lock, on BachVid with shots on the identity's seed (against no-bg-lock) |" in table
    assert "| agreement lock, on BachVid with shots on the identity's seed (against no-bg-lock) |" in table
    assert "| both locks, on BachVid with shots on the identity's seed (against no-locks) |" in table
    summary = json.loads((out / "results.json").read_text())
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    values = results.story_values(records)
    adds = summary["conditions"]["locks"]["metrics"]["histogram_distance"]["part adds"]
    expected = np.nanmean([values["locks"]["histogram_distance"][n] - values["no-locks"]["histogram_distance"][n]
                           for n in values["locks"]["histogram_distance"]])
    assert adds["mean"] == pytest.approx(expected)
    # Without a run that lacks only the locks there is nothing to compare with ...
    kept = [r for r in records if r["condition"] != "no-locks"]
    stories = results.benchmark_stories(2, shots=1)
    assert results.summarize(kept, stories, ["bachvid-idseed", "locks"], resamples=50)["conditions"]["locks"] \
        .get("compared_with") is None
    # ... but in records made when the defaults held no lock, bachvid-idseed is that run.
    unlocked = {"character_latents_until": 0.0, "background_latents_until": 0.0, "background_latents_weight": 1.0,
                "background_lock_agreement": 0.0}
    older = [{**r, "fingerprint": {**r["fingerprint"], "config": {**r["fingerprint"]["config"], **unlocked}}}
             for r in kept]
    summary = results.summarize(older, stories, ["bachvid-idseed", "bg-lock", "locks"], resamples=50)
    assert summary["conditions"]["locks"]["compared_with"] == "bachvid-idseed"
    assert summary["conditions"]["bg-lock"]["compared_with"] == "bachvid-idseed"


def test_records_know_the_model_by_its_weights_not_its_folder(tmp_path, capsys):
    """A moved checkout resumes its records; a retrained model in the same folder is refused."""
    from bachvid.backbones.tiny import tiny_cogvideox_pipeline
    from bachvid.pipeline import BachVidPipeline

    a = BachVidPipeline(tiny_cogvideox_pipeline(num_layers=2), model_name="/old/checkout/model")
    b = BachVidPipeline(tiny_cogvideox_pipeline(num_layers=2), model_name="/new/checkout/model")
    retrained = BachVidPipeline(tiny_cogvideox_pipeline(num_layers=2, seed=1), model_name="/old/checkout/model")
    first = results.Bench(a, tmp_path)
    assert results.Bench(b, tmp_path).fingerprint == first.fingerprint
    stories = results.benchmark_stories(1, shots=1)
    first._append({"story": stories[0].name, "spec": stories[0].spec(), "fingerprint": first.fingerprint})
    results.Bench(b, tmp_path).check(stories)  # same weights elsewhere: resumes
    with pytest.raises(SystemExit) as refused:
        results.Bench(retrained, tmp_path).check(stories)
    message = str(refused.value)
    assert "'model'" in message and "'steps'" not in message  # names what differs, only that


def test_records_made_before_a_knob_existed_count_as_its_default():
    from bachvid.method.config import BachVidConfig

    now = {"model": "sha256:x", "steps": 30, "config": results._jsonable(BachVidConfig(background_merge=1.0).to_dict())}
    old = {**now, "config": {k: v for k, v in now["config"].items() if k != "background_latents_until"}}
    assert results.with_new_knobs(old) == now
    locked = {**now, "config": {**now["config"], "background_latents_until": 0.5}}
    assert results.with_new_knobs(old) != locked  # a config that sets the new knob is another config
    other = {**old, "config": {**old["config"], "background_merge": 0.0}}
    assert results.with_new_knobs(other) != now  # knobs the record has are compared as they are


def test_a_diagnosis_condition_may_give_only_the_identity_its_true_mask():
    from bachvid.toy import diagnose

    assert diagnose.parse_condition("c:oracle_masks=identity").oracle_masks == "identity"
    assert diagnose.parse_condition("c:oracle_masks=1").oracle_masks is True
    truth_for_identity = diagnose.CONDITIONS["oracle_identity_mask"]
    assert truth_for_identity.oracle_masks == "identity" and ("shot_mask", "matches") in truth_for_identity.changes
    with pytest.raises(ValueError, match="identity"):
        oracle.TruthReadings(None, None, masks="shots")


# Conditions of one's own (--condition) -----------------------------------------------------------------------

def test_a_custom_condition_is_the_models_config_with_its_knobs_against_the_same_run_without():
    c = results.custom_condition("lock1: character_latents_until=1; seeds=identity; oracle_masks=true")
    assert (c.name, c.changes, c.seeds, c.oracle_masks, c.oracle_matches) == (
        "lock1", {"character_latents_until": 1}, "identity", True, False)
    assert c.compared_with == "bachvid-idseed" and c.bachvid
    assert c.label == "BachVid, character_latents_until=1, shots on the identity's seed, true masks"
    assert results.custom_condition("w:background_injection_window=1").compared_with == "bachvid"
    for bad in ("bachvid:token_merge=false", "nospec", "x:seeds=mine", "x:not_a_knob=1", "x:tau_mask=3",
                "x:token_merge"):
        with pytest.raises(ValueError):
            results.custom_condition(bad)


def test_a_custom_condition_is_reported_against_its_reference(monkeypatch):
    custom = results.custom_condition("mine:character_latents_until=1;seeds=identity")
    monkeypatch.setitem(results.CONDITIONS, "mine", custom)
    stories = results.benchmark_stories(4, shots=2)
    records = []
    for s in stories:
        for c, psnr in (("vanilla-idseed", 20.0), ("bachvid-idseed", 22.0), ("mine", 23.5)):
            shots = [{"background_psnr": psnr if s.shared else None, "histogram_distance": 0.1, "belt_kept": None,
                      "action_right": 1.0, "seconds": 1.0} for _ in s.actions]
            records.append({"story": s.name, "condition": c, "spec": s.spec(), "shots": shots})
    summary = results.summarize(records, stories, ["vanilla-idseed", "bachvid-idseed", "mine"], resamples=200)
    entry = summary["conditions"]["mine"]
    assert entry["compared_with"] == "bachvid-idseed"
    assert entry["metrics"]["background_psnr"]["part adds"]["mean"] == pytest.approx(1.5)
    table = results.markdown_table(summary)
    assert "character_latents_until=1" in table and "(against bachvid-idseed)" in table and "**+1.5" in table


@pytest.mark.slow
def test_the_results_command_runs_a_custom_condition_and_its_reference(tmp_path, capsys):
    out = tmp_path / "r"
    args = ["--stories", "1", "--shots", "1", "--steps", "2", "--out", str(out), "--conditions", "vanilla-idseed",
            "--condition", "mine:character_latents_until=0;seeds=identity", "--resamples", "50", "--sheet-stories", "1"]
    assert results.main(args) == 0
    assert "which runs too" in capsys.readouterr().err
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert sorted(r["condition"] for r in records) == ["bachvid-idseed", "mine", "vanilla-idseed"]
    summary = json.loads((out / "results.json").read_text())
    assert summary["conditions"]["mine"]["compared_with"] == "bachvid-idseed"
    assert results.main(["--stories", "1", "--conditions", "vanilla-idseed", "--condition", "bad:nope=1",
                         "--out", str(out)]) == 2
