"""`bachvid bench`: every timed forward is accounted for by its phase, and the table and JSON
report ratios against the vanilla run of the same invocation."""

import json

import pytest

from bachvid.bench import extrapolated_seconds, forward_labels, parse_modes


def test_forward_labels_follow_the_modes_schedules():
    inject, reads = range(0, 4), frozenset({1})
    lock = forward_labels("lockstep", 5, 2, inject, shots=3, group=2, read_steps=reads)
    # identity alone for the pre-run's 2 steps, then per group: 2 pre-run + 5 real steps
    assert lock[:2] == ["identity", "identity"]
    assert lock[2:4] == ["group2:prerun", "group2:prerun-read"]
    assert lock.count("group2:real-injected") == 4 and lock.count("group1:real-plain") == 1
    assert len(lock) == 2 + 2 * (2 + 5)
    replay = forward_labels("replay", 5, 2, inject, shots=3, group=3)
    assert replay.count("identity") == 5 and len(replay) == 5 + 7
    assert forward_labels("vanilla", 5, 2, inject, shots=3, group=1) == ["vanilla"] * 20


def test_extrapolation_uses_each_phase_mean():
    labels = ["a", "a", "b"]
    assert extrapolated_seconds(labels, [1.0, 3.0, 10.0], ["a"] * 4 + ["b"]) == pytest.approx(18.0)
    with pytest.raises(ValueError, match="no measured forward for c"):
        extrapolated_seconds(labels, [1.0, 3.0, 10.0], ["c"])


def test_parse_modes():
    assert parse_modes("lockstep:3,replay") == [("vanilla", None), ("lockstep", 3), ("replay", None)]
    for bad in ("warp", "lockstep:0", "replay:x", ""):
        with pytest.raises(ValueError):
            parse_modes(bad)


@pytest.mark.slow
def test_bench_runs_on_a_scaled_cogvideox(tmp_path, capsys):
    from bachvid.cli import main

    out = tmp_path / "bench.json"
    code = main(["bench", "--random-weights", "cogvideox-5b", "--layers", "2", "--heads", "2", "--steps", "3",
                 "--frames", "9", "--height", "32", "--width", "48", "--shots", "2", "--modes",
                 "cache,lockstep:2,replay:1", "--extrapolate", "10", "--coarse", "2", "--device", "cpu",
                 "--json", str(out), "--profile", str(tmp_path / "profile.txt")])
    assert code == 0
    table = capsys.readouterr().out
    assert "| lockstep:2 | 2 |" in table and "| replay:1 | 1 |" in table
    report = json.loads(out.read_text())
    assert report["modes"]["vanilla"]["time_ratio"] == 1.0
    lock = report["modes"]["lockstep:2"]
    # lockstep keeps the identity's latents of the pre-run steps only; replay of every step
    assert 0 < lock["identity_bytes"] < report["modes"]["replay:1"]["identity_bytes"]
    assert lock["forwards"] == 2 + 1 * (2 + 3) and lock["extrapolated_time_ratio"] > 0
    # 10 steps: pre-run of 2 steps (read at step 2 of 10 -> steps 0..2); stride 2 runs steps 0 and 2:
    # one pre-run forward fewer, at the measured mean cost of a plain pre-run forward.
    assert lock["coarse_stride"] == 2
    saved = lock["extrapolated_seconds"] - lock["extrapolated_seconds_coarse"]
    assert saved == pytest.approx(lock["per_step"]["group2:prerun"]["mean_seconds"])
    assert "same, pre-run stride 2" in table
    profile = (tmp_path / "profile.txt").read_text()  # the last mode's ops, the attention among them
    assert "Self CPU" in profile and "scaled_dot_product" in profile


def test_bench_refuses_unknown_modes(capsys):
    from bachvid.cli import main

    assert main(["bench", "--modes", "warp"]) == 2
    assert "--modes takes" in capsys.readouterr().err


def test_bench_attention_times_both_exact_methods_against_plain(tmp_path, capsys):
    import json

    from bachvid.bench_attention import main, pair_ratio

    # 10 tokens, 2 text, 8 video with 2 foreground: 100 own pairs + 2*2 + 6*6 extra -> 1.4
    assert pair_ratio(10, 2, 0.25) == 1.4
    out = tmp_path / "a.json"
    assert main(["--tokens", "300", "--text", "12", "--heads", "2", "--dim", "16", "--repeat", "1",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["ratios"]) == {"plain", "merge", "partition"}
    assert report["max_difference"] < 1e-5
    assert "pairs alone" in capsys.readouterr().out
    assert main(["--foreground", "1.5"]) == 2
