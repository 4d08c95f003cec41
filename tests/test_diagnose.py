"""The diagnosis harness: belt reader, background error, bootstrap, conditions, stories, and the
shots' seeds a run uses."""

import json

import numpy as np
import pytest

from bachvid.toy import diagnose, world
from bachvid.toy.evaluate import score_clip
from bachvid.toy.stats import paired_bootstrap_by_key


def _true_accessory(b, c, a, seed):
    """Replays world.render_clip's draws up to the accessory colour."""
    rng = np.random.default_rng([seed, list(world.BACKGROUNDS).index(b), list(world.CHARACTERS).index(c),
                                 list(world.ACTIONS).index(a)])
    world.render_background(b, rng)
    box = world.BASE_SIZE * rng.uniform(1.0, 1.08)
    rng.uniform(*world._start_range(a, box, world.SIZE))
    rng.uniform(8, 14), rng.uniform(0, 2 * np.pi), rng.integers(0, 2)
    colour = rng.choice([(30, 30, 30), (250, 200, 0), (0, 120, 40), (240, 120, 160)])
    return int(np.argmin(((diagnose.ACCESSORIES - colour) ** 2).sum(-1)))


def test_belt_reader_finds_the_rendered_belt_through_the_evaluators_mask():
    for seed in range(8):
        b, c, a = list(world.BACKGROUNDS)[seed % 4], list(world.CHARACTERS)[seed // 2 % 4], list(world.ACTIONS)[seed % 5]
        clip = world.render_clip(b, c, a, seed)
        assert diagnose.accessory_of(clip.frames, score_clip(clip.frames).mask) == _true_accessory(b, c, a, seed)


def test_shot_metrics_of_a_clip_against_itself_and_another_seed():
    clip = world.render_clip("meadow", "robot", "stand", 1)
    same, _ = diagnose.shot_metrics(clip.frames, clip.frames, "stand")
    assert same["bg_psnr"] > 59 and same["bg_mae"] == 0 and same["hist_distance"] == pytest.approx(0, abs=1e-9)
    assert same["accessory_kept"] == 1.0 and same["action_right"] == 1.0
    assert same["belt_kept"] == 1.0 and same["shot_belt_read"] == 1.0 and same["belt_distance"] == 0
    other = world.render_clip("meadow", "robot", "left", 2)
    row, _ = diagnose.shot_metrics(clip.frames, other.frames, "left")
    assert row["bg_psnr"] < same["bg_psnr"] and row["bg_mae"] > 0 and row["action_right"] == 1.0


def test_paired_bootstrap_and_complete_stories():
    a = {f"s{i}": 1.0 + 0.1 * i for i in range(10)}
    b = {f"s{i}": 0.5 + 0.1 * i for i in range(10)}
    ci = paired_bootstrap_by_key(a, b)
    assert ci["mean"] == pytest.approx(0.5) and ci["low"] == pytest.approx(0.5) and ci["high"] == pytest.approx(0.5)
    noisy = paired_bootstrap_by_key({k: v + np.sin(i) for i, (k, v) in enumerate(a.items())}, b)
    assert noisy["low"] < noisy["mean"] < noisy["high"] and noisy["n"] == 10
    assert paired_bootstrap_by_key({**a, "only-here": 9.0}, b)["n"] == 10  # keys on one side only are left out
    assert paired_bootstrap_by_key({"s0": 1.0}, b) is None
    rows = [{"story": "x", "condition": "p"}, {"story": "x", "condition": "q"}, {"story": "y", "condition": "p"}]
    assert {r["story"] for r in diagnose.complete_rows(rows)} == {"x"}


def test_conditions_and_stories():
    c = diagnose.parse_condition("fix:injected_logit_bias=1.5;vital_layers=all;oracle_masks=1;x0=1")
    assert c.changes == (("injected_logit_bias", 1.5), ("vital_layers", "all")) and c.oracle_masks and c.x0
    assert not c.oracle_matches and c.kind == "bachvid"
    stories = diagnose.diagnosis_stories(4, seed=3)
    _, held_out = world.split_combinations()
    for story in stories:
        assert story.shared_background and story.identity.action == world.ACTIONS["stand"]
        assert len(story.shots) == 3 and len({s.action for s in story.shots}) == 3
        b = {v: k for k, v in world.BACKGROUNDS.items()}[story.identity.background]
        ch = {v: k for k, v in world.CHARACTERS.items()}[story.character]
        assert any(h[:2] == (b, ch) for h in held_out)


@pytest.mark.slow
def test_conditions_choose_the_shots_seeds_whatever_the_models_default(tmp_path, monkeypatch):
    """The toy model's default puts shots on the identity's seed; diagnose's rows say which they
    used, so BachVid conditions run on their own seeds unless marked identity_seed (an earlier
    version crashed on identity_seed)."""
    from bachvid.pipeline import BachVidPipeline

    seen = {}
    generate = BachVidPipeline.generate

    def spy(self, story, settings, config, **kw):
        results = list(generate(self, story, settings, config, **kw))
        seen[config.background_latents_until] = (settings.shot_seeds, [r.seed for r in results])
        return iter(results)

    monkeypatch.setattr(BachVidPipeline, "generate", spy)
    args = ["--stories", "1", "--steps", "3", "--out", str(tmp_path), "--threads", "1", "--conditions", "bachvid",
            "--condition", "unlocked:identity_seed=1;background_latents_until=0", "--keep-frames"]
    assert diagnose.main(args) == 0
    assert BachVidPipeline.from_pretrained().default_config().background_latents_until == 1.0  # the toy default
    own, identity = seen[1.0], seen[0.0]
    assert own[0] == "own" and len(set(own[1])) == 4
    assert identity[0] == "identity" and set(identity[1]) == {identity[1][0]}
    rows = [json.loads(line) for f in tmp_path.glob("rows-*.jsonl") for line in f.read_text().splitlines()]
    assert {r["condition"] for r in rows} == {"bachvid", "unlocked"} and len(rows) == 6
    # Where the injected attention goes, per vital layer, for both query sets; the report tabulates it.
    vital = {str(layer) for layer in BachVidPipeline.from_pretrained().default_config().vital_layers}
    for r in rows:
        assert set(r["spread"]) == {"background", "foreground"} and set(r["spread"]["background"]) == vital
    assert diagnose.main(["--report", "--out", str(tmp_path)]) == 0
    spread = (tmp_path / "spread.md").read_text()
    assert all(f"| unlocked | background | {layer} |" in spread for layer in vital)
    # --keep-frames: every video of the run, the very frames the rows were scored on.
    kept = {f.stem: np.load(f)["frames"] for f in (tmp_path / "frames").glob("*.npz")}
    assert len(kept) == 8
    for r in rows:
        name = f"{r['story']}-{r['condition']}"
        again, _ = diagnose.shot_metrics(kept[f"{name}-identity"], kept[f"{name}-{r['shot']}"], r["action"])
        assert again["bg_psnr"] == pytest.approx(r["bg_psnr"]) and again["belt_kept"] == r["belt_kept"]


def test_foreground_logit_bias_reweighs_only_the_foreground_injection():
    import torch

    from bachvid.method.config import BachVidConfig
    from bachvid.method.match import Matches
    from bachvid.method.plan import Layers, PlanMaker

    identity_fg = torch.tensor([[[True, False], [False, False]]])
    current_fg = torch.tensor([[[False, True], [False, False]]])
    matches = Matches(torch.tensor([0, 0, 0, 0]), torch.ones(4))
    layers = Layers(frozenset({0}), frozenset({0}), frozenset({0}))

    def biases(**knobs):
        maker = PlanMaker(BachVidConfig(injected_logit_bias=2.0, **knobs), layers, num_steps=4, text_length=3)
        plan = maker.shot_plans(identity_fg, current_fg, matches)(0)
        return [i.bias for i in plan.injections]

    assert biases() == [2.0, 2.0]  # background, foreground: None follows injected_logit_bias
    assert biases(foreground_logit_bias=-1.0) == [2.0, -1.0]
    with pytest.raises(ValueError, match="foreground_logit_bias"):
        BachVidConfig(foreground_logit_bias=float("nan"))
    c = diagnose.parse_condition("weak:foreground_bias=-2")  # the older diagnoses' name for the knob
    assert dict(c.changes) == {"foreground_logit_bias": -2.0}


@pytest.mark.parametrize("model", ["toy-cogvideox", "toy-wan"])
def test_x0_capture_reads_each_backbones_scheduler(model):
    """DDIM hands x0 back beside the sample; Wan's UniPC does not, and the capture reads its x0
    prediction instead: for flow matching, sample - sigma * velocity, at the steps asked, per video,
    also when each video steps its own deep copy of the scheduler (as the Wan backbone does)."""
    import copy
    from types import SimpleNamespace

    import torch
    from diffusers import CogVideoXDDIMScheduler, UniPCMultistepScheduler

    from bachvid.models import shipped_model_path

    wan = model == "toy-wan"
    kind = UniPCMultistepScheduler if wan else CogVideoXDDIMScheduler
    scheduler = kind.from_pretrained(shipped_model_path(model) / "scheduler")
    scheduler.set_timesteps(6)
    capture = diagnose.X0Capture(SimpleNamespace(pipe=SimpleNamespace(scheduler=scheduler)), steps=[0, 2])
    copies = [copy.deepcopy(scheduler) for _ in range(2)] if wan else [scheduler, scheduler]
    capture.arm(videos=2, steps=6)
    generator = torch.Generator().manual_seed(0)
    samples = [torch.randn(1, 4, 2, 4, 4, generator=generator) for _ in range(2)]
    expected = [{}, {}]
    for i, t in enumerate(scheduler.timesteps):
        for video in range(2):
            output = torch.randn(samples[video].shape, generator=generator)
            if wan:
                expected[video][i] = samples[video] - scheduler.sigmas[i] * output
            result = copies[video].step(output, t, samples[video], return_dict=False)
            if not wan:
                expected[video][i] = result[1]
            samples[video] = result[0]
    got = capture.take()
    capture.remove()
    assert type(scheduler) is kind
    for video in range(2):
        assert sorted(got[video]) == [0, 2]
        for step in got[video]:
            torch.testing.assert_close(got[video][step], expected[video][step])


def test_the_table_says_how_many_stories_the_belt_rests_on():
    def row(story, condition, belt):
        return {"story": story, "condition": condition, "shot": 0, "bg_psnr": 20.0, "bg_mae": 5.0,
                "hist_distance": 0.2, "accessory_kept": belt, "action_right": 1.0, "character_kept": 1.0}

    rows = [row(s, c, 0.0 if s == "a" else None) for s in "abc" for c in (diagnose.BASELINE, "bachvid")]
    summary = diagnose.summarise(rows)
    assert summary["bachvid"]["belt_stories"] == 1 and summary["bachvid"]["stories"] == 3
    assert "| 0.00 (n=1) |" in diagnose.markdown_table(summary, {})
    everyone = [dict(r, accessory_kept=1.0) for r in rows]
    assert "| 1.00 |" in diagnose.markdown_table(diagnose.summarise(everyone), {})


def test_the_table_names_the_condition_it_compares_with():
    rows = [{"story": s, "condition": c, "shot": 0, "bg_psnr": 20.0 + (c == "lock"), "bg_mae": 5.0,
             "hist_distance": 0.2, "accessory_kept": None, "action_right": 1.0, "character_kept": 1.0}
            for s in "abc" for c in (diagnose.BASELINE, "bachvid_identity_seed", "lock")]
    labels = {"bachvid_identity_seed": "BachVid, shots on the identity's seed"}
    default = diagnose.markdown_table(diagnose.summarise(rows), labels)
    assert default.splitlines()[0].count("vs identity's seed") == 2
    table = diagnose.markdown_table(diagnose.summarise(rows, "bachvid_identity_seed"), labels, "bachvid_identity_seed")
    assert "vs identity's seed" not in table.splitlines()[0]
    assert table.splitlines()[0].count("vs BachVid, shots on the identity's seed") == 2
    assert "**+1.00 [+1.00, +1.00]**" in next(line for line in table.splitlines() if line.startswith("| lock"))


def test_belt_table_says_per_action_where_the_belt_is_lost():
    rows = [{"condition": "a", "action": "left", "belt_kept": 1.0, "shot_belt_read": 1.0},
            {"condition": "a", "action": "jump", "belt_kept": 0.0, "shot_belt_read": 0.0},
            {"condition": "a", "action": "jump", "belt_kept": 0.0, "shot_belt_read": 1.0},
            {"condition": "a", "action": "closer", "belt_kept": None, "shot_belt_read": None},  # unreadable identity
            {"condition": "b", "action": "left", "belt_kept": None, "shot_belt_read": None}]
    table = diagnose.belt_table(rows, {"a": "with lock"})
    assert "| condition | belt kept | left | jump | shot's belt readable | shots |" in table
    assert "| with lock | 0.33 | 1.00 | 0.00 | 0.67 | 3 |" in table
    assert "| b |" not in table  # no shot with a readable identity belt
