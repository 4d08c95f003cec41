"""`bachvid analyze`: the paper's layer x step analysis, scored against the toy world's truth.

BachVid reads two things from a video model's attention: the foreground mask (video-to-text
attention at `tau_mask`, averaged over `mask_layers`) and point matches (cosine similarity of
attention outputs at `tau_match`, averaged over `match_layers`). Which layers and which step work
depends on the model. On the toy world every video can be read back from its pixels (the toy
evaluator), so each (denoising step, layer) can be scored:

- **mask IoU**: the mask that layer alone gives at that step, against the character the finished
  video shows (the evaluator's pixel mask on the latent token grid, `world.latent_token_mask`),
  for both foreground spans ("after_background": character + action words, "character");
- **mask ranking**: how well that layer's foreground share fg / (fg + bg) ranks the character's
  tokens above the rest (AUC against the same truth; 0.5 is chance). Low IoU with a high AUC is a
  threshold to fix; an AUC near 0.5 is attention that does not know where the character is;
- **match accuracy**: for an identity ("stands still") and a shot of the same story (another
  action, the next seed: `Story.shot_seed`), both generated plainly, every true-foreground token
  of the shot is matched to the identity token with the most similar attention output at that
  (step, layer) (cosine, argmax over all identity tokens, as `method/match.py` does). A match is right
  when the identity token lies within one token (Chebyshev, in h and w) of the true
  correspondence: the identity token *of the matched token's latent frame* whose character-local
  body coordinate (from the evaluator's mask, `oracle.body_coordinates`) is nearest the shot
  token's (the identity stands, so every body point is in every frame; a match to any frame is
  judged in that frame). Also kept: the share of foreground tokens whose match BachVid would
  keep (it lands in the identity's true foreground with similarity >= `match_threshold`) and the
  accuracy among those.

The videos are held-out combinations (`world.split_combinations()`, never trained on) with fixed
seeds: `--videos N` makes N // 2 stories (identity + one shot), i.e. N videos for the mask table
and N // 2 shots for the match table. Outputs (`--out DIR`): `report.json`, one CSV per table
(rows: steps, columns: layers), PNG heatmaps, and the best choices: mask layers (added greedily
while the layer-averaged mask improves) and step, match layers and step likewise, as a
`BachVidConfig` override (`python -m bachvid.toy.calibrate` writes it into a model's bachvid.json).

    bachvid analyze --videos 24 --out runs/analyze

This module also holds the attention-mass probe used by the diagnosis (`MassProbe`,
`injected_mass`): the softmax share that queries put on injected identity keys.

Heavy imports (torch, diffusers) happen inside functions, so `bachvid --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..io.terminal import quiet_loading_bars_off_terminal
from ..method.config import MASK_RULES
from ..method.prompt import FOREGROUND_SPANS as SPANS  # every span a mask may stand on

DEFAULT_FRACTIONS = tuple(round(0.1 * i, 2) for i in range(10))  # steps 0, 3, ..., 27 of 30
MATCH_TABLES = ("match_accuracy", "match_kept", "match_kept_accuracy")


# The stories -----------------------------------------------------------------------------------

def held_out_pairs(count: int, seed: int = 0) -> list[dict]:
    """`count` (identity, shot) prompt pairs from held-out combinations, with fixed seeds.

    Each held-out combination (background, character, action) gives its background and character;
    the identity stands still and the shot does the combination's action (another one, drawn, when
    the combination's action is "stand"). The identity has a drawn seed s, the shot s + 1 (the
    story rule `Story.shot_seed`)."""
    import numpy as np

    from . import world

    _, held_out = world.split_combinations()
    rng = np.random.default_rng(seed)
    moving = [a for a in world.ACTIONS if a != "stand"]
    pairs = []
    for _ in range(count):
        b, c, a = held_out[rng.integers(len(held_out))]
        if a == "stand":
            a = moving[rng.integers(len(moving))]
        s = int(rng.integers(1 << 20))
        pairs.append({"identity": (b, c, "stand"), "identity_seed": s, "shot": (b, c, a), "shot_seed": s + 1})
    return pairs


# Recording one plain generation ------------------------------------------------------------------

class AttentionRecorder:
    """A mask.TextAttentionReader in place of the method's MaskReader: keeps the background/
    foreground scores of every (foreground span, step, layer) apart instead of averaging them."""

    def __init__(self, spans):
        import torch

        self.real_length = spans.real_length
        self.words = {span: (torch.tensor(spans.background), torch.tensor(spans.foreground(span))) for span in SPANS}
        self.scores: dict[str, dict[int, dict[int, tuple]]] = {span: {} for span in SPANS}

    def add(self, layer, video_queries, text_keys, *, step):
        from ..method.mask import text_attention_scores

        for span, (background, foreground) in self.words.items():
            self.scores[span].setdefault(step, {})[layer] = text_attention_scores(
                video_queries, text_keys, self.real_length, background, foreground)


def layer_mask(scores, grid, kernel: int, rule: str = "fg_over_bg"):
    """The cleaned mask of the layer-averaged scores, as the method computes it (`mask_rule`)."""
    from ..method.mask import foreground_tokens, open_mask

    bg, fg = average_scores(scores)
    return open_mask(foreground_tokens(bg, fg, rule).reshape(grid).cpu(), kernel).numpy()


def average_scores(scores):
    """(background, foreground) scores averaged over layers, as the method's MaskReader averages them."""
    return sum(s[0] for s in scores) / len(scores), sum(s[1] for s in scores) / len(scores)


def record(pipe, combo, seed: int, steps, settings, outputs: bool = True) -> dict:
    """One plain generation (BachVid off: nothing injected) that reads, at `steps`, the text
    attention of every layer (mask scores) and, with `outputs`, every layer's attention output of
    the conditional branch (match features, float16). Returns the frames, the evaluator's pixel
    mask, its token-grid truth, the scores, the features and the grid."""
    import torch

    from ..method.identity import CachedIdentity
    from ..method.plan import PLAIN, StepPlan
    from . import oracle, world
    from .evaluate import score_clip

    spans = pipe.spans(*world.texts(*combo))
    layers = frozenset(range(pipe.backbone.num_layers))
    recorder = AttentionRecorder(spans)
    keep = CachedIdentity(text_length=pipe.backbone.text_length)
    steps = set(steps)

    def plan(step: int) -> StepPlan:
        if step not in steps:
            return PLAIN
        return StepPlan(step=step, read_mask=layers, keep_output=layers if outputs else frozenset())

    frames = pipe.denoise(spans, seed, settings, plan, target=keep, mask_reader=recorder).frames
    features = {}
    if outputs:
        for (step, layer), cond in keep.conditional_outputs().items():  # (H, Nv, D)
            features[step, layer] = cond.transpose(0, 1).reshape(cond.shape[1], -1).to(torch.float16)
    pixels = score_clip(frames).mask
    grid = pipe.backbone.token_grid(settings.num_frames, settings.height, settings.width)
    return {"combo": combo, "seed": seed, "frames": frames, "pixels": pixels, "truth": oracle.token_mask(pixels),
            "scores": recorder.scores, "features": features, "grid": grid}


# Scoring -------------------------------------------------------------------------------------------

def mask_iou(runs, span: str, step: int, layers, kernel: int = 3, rule: str = "fg_over_bg") -> float:
    """Mean IoU over `runs` of the mask the layer-averaged scores give under `rule`, against the truth."""
    import numpy as np

    from .evaluate import iou

    return float(np.mean([iou(layer_mask([r["scores"][span][step][layer] for layer in layers], r["grid"], kernel,
                                         rule), r["truth"]) for r in runs]))


def ranking_auc(score, truth) -> float | None:
    """The chance that a true character token scores above a true background token (ties count
    half): how well a score ranks the character whatever the threshold. 0.5 is no better than
    chance, and then no threshold (`tau`, a normalisation) can make a good mask of it. None when
    the truth has no character or no background."""
    import numpy as np

    s, t = np.asarray(score, np.float64).ravel(), np.asarray(truth, bool).ravel()
    if t.all() or not t.any():
        return None
    fg, bg = s[t][:, None], s[~t][None]
    return float((fg > bg).mean() + 0.5 * (fg == bg).mean())


def mask_ranking(runs, span: str, step: int, layers) -> float | None:
    """Mean over `runs` of `ranking_auc` of the layer-averaged foreground share fg / (fg + bg)."""
    import numpy as np

    values = []
    for r in runs:
        bg, fg = average_scores([r["scores"][span][step][layer] for layer in layers])
        values.append(ranking_auc((fg / (fg + bg).clamp_min(1e-12)).cpu().numpy(), r["truth"]))
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def similarity(shot: dict, identity: dict, step: int, layers):
    """(Nv, Nv') cosine similarity of the shot's and the identity's attention outputs, averaged over layers."""
    import torch.nn.functional as F

    total = None
    for layer in layers:
        a = F.normalize(shot["features"][step, layer].float(), dim=-1)
        b = F.normalize(identity["features"][step, layer].float(), dim=-1)
        sim = a @ b.T
        total = sim if total is None else total + sim
    return total / len(layers)


def match_scores(shot: dict, identity: dict, index, sim, threshold: float = 0.5) -> dict:
    """Accuracy of matches `index` (flat identity token per shot token) with similarities `sim`
    over the shot's true-foreground tokens; the share BachVid would keep and their accuracy."""
    import numpy as np

    from . import oracle

    index, sim = np.asarray(index).reshape(-1), np.asarray(sim).reshape(-1)
    fg = np.flatnonzero(shot["truth"].reshape(-1))
    grid = shot["grid"]
    accuracy = oracle.match_accuracy(index, fg, shot["pixels"], identity["pixels"], grid)
    kept = fg[identity["truth"].reshape(-1)[index[fg]] & (sim[fg] >= threshold)] if len(fg) else fg
    kept_accuracy = oracle.match_accuracy(index, kept, shot["pixels"], identity["pixels"], grid)
    return {"match_accuracy": accuracy, "match_kept": len(kept) / len(fg) if len(fg) else None,
            "match_kept_accuracy": kept_accuracy}


def pair_match(pair, step: int, layers, threshold: float = 0.5) -> dict:
    """Match the shot of `pair` ({"identity": run, "shot": run}) to its identity, as BachVid does."""
    value, index = similarity(pair["shot"], pair["identity"], step, layers).max(dim=-1)
    return match_scores(pair["shot"], pair["identity"], index.numpy(), value.numpy(), threshold)


def mean_match(pairs, step: int, layers, threshold: float = 0.5) -> dict:
    import numpy as np

    scores = [pair_match(p, step, layers, threshold) for p in pairs]
    return {k: (float(np.mean(v)) if (v := [s[k] for s in scores if s[k] is not None]) else None)
            for k in MATCH_TABLES}


def chance_matches(pairs, draws: int = 20, seed: int = 0) -> dict:
    """Match accuracy without attention, for scale: every true-foreground shot token matched to a
    random identity foreground token of the same latent frame ("random_fg"), or to the identity
    token at its own grid position ("same_position")."""
    import numpy as np

    from . import oracle

    rng = np.random.default_rng(seed)
    random_fg, same = [], []
    for pair in pairs:
        shot, identity = pair["shot"], pair["identity"]
        lf, h, w = shot["grid"]
        fg = np.flatnonzero(shot["truth"].reshape(-1))
        if not len(fg):
            continue
        same.append(oracle.match_accuracy(np.arange(lf * h * w), fg, shot["pixels"], identity["pixels"], shot["grid"]))
        id_fg = identity["truth"].reshape(lf, -1)
        if not id_fg.any():  # no character in the identity (a weak model): nothing to draw from
            continue
        for _ in range(draws):
            index = np.arange(lf * h * w)
            for t in fg:
                f = t // (h * w)
                choices = np.flatnonzero(id_fg[f]) if id_fg[f].any() else np.flatnonzero(identity["truth"].reshape(-1))
                index[t] = (f * h * w + choices[rng.integers(len(choices))]) if id_fg[f].any() else \
                    choices[rng.integers(len(choices))]
            random_fg.append(oracle.match_accuracy(index, fg, shot["pixels"], identity["pixels"], shot["grid"]))
    return {"random_fg": float(np.mean(random_fg)) if random_fg else None,
            "same_position": float(np.mean(same)) if same else None}


def greedy_layers(score, single: dict[int, float]) -> tuple[list[int], float]:
    """Start from the best single layer; add the layer that helps most while the score rises."""
    order = sorted(single, key=single.get, reverse=True)
    chosen, value = [order[0]], single[order[0]]
    while True:
        trials = [(score(sorted(chosen + [layer])), layer) for layer in order if layer not in chosen]
        if not trials:
            break
        gain, layer = max(trials)
        if gain <= value + 1e-3:
            break
        chosen, value = sorted(chosen + [layer]), gain
    return chosen, value


# The analysis ----------------------------------------------------------------------------------------

def candidate_steps(fractions, num_steps: int) -> list[int]:
    """The steps at which readings scheduled at `fractions` happen (as tau_mask / tau_match would)."""
    from ..method.config import read_step

    return sorted({read_step(f, num_steps) for f in fractions})


def collect(pipe, videos: int = 24, seed: int = 0, fractions=DEFAULT_FRACTIONS, settings=None,
            matches: bool = True, progress: bool = False) -> dict:
    """Generate the analysis videos: `videos // 2` held-out (identity, shot) pairs, recorded at the
    candidate steps (mask scores always; attention outputs with `matches`)."""
    settings = settings or pipe.default_settings()
    steps = candidate_steps(fractions, settings.num_inference_steps)
    pairs = []
    for i, p in enumerate(held_out_pairs(max(1, videos // 2), seed)):
        if progress:
            print(f"[analyze] story {i + 1}/{max(1, videos // 2)}: {p['shot']} seeds {p['identity_seed']}, "
                  f"{p['shot_seed']}", flush=True)
        pairs.append({"identity": record(pipe, p["identity"], p["identity_seed"], steps, settings, matches),
                      "shot": record(pipe, p["shot"], p["shot_seed"], steps, settings, matches)})
    return {"pairs": pairs, "steps": steps, "settings": settings, "num_layers": pipe.backbone.num_layers}


def analyze(pipe, videos: int = 24, seed: int = 0, fractions=DEFAULT_FRACTIONS, settings=None, kernel: int = 3,
            threshold: float = 0.5, matches: bool = True, progress: bool = False, collected: dict | None = None,
            mask_rule: str = "fg_over_bg") -> dict:
    """The whole analysis as a JSON-ready report (see the module docstring); masks are read with
    `mask_rule` (BachVidConfig.mask_rule) throughout."""
    from ..method.config import BachVidConfig
    from ..method.plan import Schedule

    data = collected or collect(pipe, videos, seed, fractions, settings, matches, progress)
    pairs, steps, settings = data["pairs"], data["steps"], data["settings"]
    n = settings.num_inference_steps
    layers = list(range(data["num_layers"]))
    runs = [r for p in pairs for r in (p["identity"], p["shot"])]

    masks = {span: {s: {l: mask_iou(runs, span, s, [l], kernel, mask_rule) for l in layers} for s in steps}
             for span in SPANS}
    ranking = {span: {s: {l: mask_ranking(runs, span, s, [l]) for l in layers} for s in steps} for span in SPANS}
    best_mask = {"iou": -1.0}
    for span in SPANS:
        for s in steps:
            chosen, value = greedy_layers(lambda c: mask_iou(runs, span, s, c, kernel, mask_rule), masks[span][s])
            if value > best_mask["iou"]:
                best_mask = {"iou": value, "span": span, "step": s, "layers": chosen}
    default_config = BachVidConfig()  # the method's defaults, before any calibration
    defaults, schedule = pipe.layers(default_config), Schedule.of(default_config, n)
    default_mask_step, default_match_step = schedule.mask_step, schedule.match_step
    default_span = default_config.mask_foreground
    report = {
        "videos": len(runs), "stories": len(pairs), "steps": n, "candidate_steps": steps, "layers": layers,
        "seed": seed, "guidance": settings.guidance_scale, "kernel": kernel, "mask_rule": mask_rule,
        "match_threshold": threshold,
        "stories_used": [{"identity": list(p["identity"]["combo"]), "identity_seed": p["identity"]["seed"],
                          "shot": list(p["shot"]["combo"]), "shot_seed": p["shot"]["seed"]} for p in pairs],
        "mask_iou": {span: _json_table(t) for span, t in masks.items()},
        "best_mask": best_mask,
        "mask_ranking": {span: _json_table(t) for span, t in ranking.items()},
        "best_mask_ranking": mask_ranking(runs, best_mask["span"], best_mask["step"], best_mask["layers"]),
        "default_mask": {"span": default_span, "step": default_mask_step, "layers": sorted(defaults.mask),
                         "iou": mask_iou(runs, default_span, default_mask_step, sorted(defaults.mask), kernel,
                                         mask_rule)
                         if default_mask_step in steps else None},
    }
    config = {"mask_layers": best_mask["layers"], "tau_mask": round(best_mask["step"] / n, 4),
              "mask_foreground": best_mask["span"], "mask_rule": mask_rule}
    if matches:
        tables = {k: {s: {} for s in steps} for k in MATCH_TABLES}
        for s in steps:
            for l in layers:
                scores = mean_match(pairs, s, [l], threshold)
                for k in MATCH_TABLES:
                    tables[k][s][l] = scores[k]
        best_match = {"match_accuracy": -1.0}
        for s in steps:
            single = {l: (v if v is not None else 0.0) for l, v in tables["match_accuracy"][s].items()}
            chosen, value = greedy_layers(lambda c: mean_match(pairs, s, c, threshold)["match_accuracy"] or 0.0,
                                          single)
            if value > best_match["match_accuracy"]:
                best_match = {"step": s, "layers": chosen, **mean_match(pairs, s, chosen, threshold)}
        report.update({k: _json_table(t) for k, t in tables.items()})
        report["best_match"] = best_match
        report["match_chance"] = chance_matches(pairs)
        report["default_match"] = ({"step": default_match_step, "layers": sorted(defaults.match),
                                    **mean_match(pairs, default_match_step, sorted(defaults.match), threshold)}
                                   if default_match_step in steps else None)
        config.update(match_layers=best_match["layers"], tau_match=round(best_match["step"] / n, 4))
    report["config"] = config
    return report


def _json_table(table: dict) -> dict:
    return {str(s): {str(l): (None if v is None else round(float(v), 4)) for l, v in row.items()}
            for s, row in table.items()}


# Outputs -------------------------------------------------------------------------------------------

def table_rows(table: dict) -> tuple[list[int], list[int], list[list[float | None]]]:
    """(steps, layers, values[step][layer]) of a report table {step: {layer: value}} (str or int keys)."""
    steps = sorted(int(s) for s in table)
    layers = sorted({int(l) for row in table.values() for l in row})
    rows = [[_get(table, s, l) for l in layers] for s in steps]
    return steps, layers, rows


def _get(table, step, layer):
    row = table.get(str(step), table.get(step, {}))
    return row.get(str(layer), row.get(layer))


def write_csv(table: dict, path: Path) -> None:
    steps, layers, rows = table_rows(table)
    lines = ["step," + ",".join(f"layer{l}" for l in layers)]
    for s, row in zip(steps, rows):
        lines.append(f"{s}," + ",".join("" if v is None else f"{v:.4f}" for v in row))
    path.write_text("\n".join(lines) + "\n")


def heatmap(table: dict, path: Path, title: str, best: tuple[int, list[int]] | None = None,
            label: str = "", vmin: float | None = 0.0, vmax: float | None = 1.0, transpose: bool = False) -> None:
    """A step x layer heatmap (rows: denoising steps, columns: layers; `transpose`: the other way
    round), values written in the cells; `best` (step, layers) outlines the chosen cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    steps, layers, rows = table_rows(table)
    values = np.array([[np.nan if v is None else v for v in row] for row in rows], float)
    ylab, xlab, yticks, xticks = "denoising step", "layer", steps, layers
    if transpose:
        values, ylab, xlab, yticks, xticks = values.T, xlab, ylab, xticks, yticks
    width, height = 1.6 + 0.5 * len(xticks), 1.2 + 0.34 * len(yticks)
    fig, ax = plt.subplots(figsize=(max(width, 5.0), height))
    image = ax.imshow(values, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    top = vmax if vmax is not None else float(np.nanmax(values))
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=6 if transpose else 7,
                        color="white" if values[i, j] < 0.6 * top else "black")
    if best is not None and best[0] in steps:
        for layer in best[1]:
            if layer in layers:
                i, j = steps.index(best[0]), layers.index(layer)
                i, j = (j, i) if transpose else (i, j)
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(range(len(xticks)), [str(x) for x in xticks])
    ax.set_yticks(range(len(yticks)), [str(y) for y in yticks])
    ax.set_xlabel(xlab)
    ax.set_ylabel(ylab)
    ax.set_title(title, fontsize=8, wrap=True)
    fig.colorbar(image, ax=ax, label=label, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report: dict, out: Path) -> list[Path]:
    """report.json, a CSV and a PNG per table; returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json"]
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    best = report["best_mask"]
    for span in SPANS:
        table = report["mask_iou"][span]
        write_csv(table, out / f"mask_iou_{span}.csv")
        heatmap(table, out / f"mask_iou_{span}.png",
                f"mask IoU vs truth ({span}), {report['videos']} videos; best set outlined",
                (best["step"], best["layers"]) if best.get("span") == span else None, "IoU")
        written += [out / f"mask_iou_{span}.csv", out / f"mask_iou_{span}.png"]
        if "mask_ranking" in report:
            table = report["mask_ranking"][span]
            write_csv(table, out / f"mask_ranking_{span}.csv")
            heatmap(table, out / f"mask_ranking_{span}.png",
                    f"how well attention ranks the character ({span}): AUC vs truth, 0.5 = chance",
                    None, "AUC")
            written += [out / f"mask_ranking_{span}.csv", out / f"mask_ranking_{span}.png"]
    if "match_accuracy" in report:
        titles = {"match_accuracy": "match accuracy (all fg tokens, within 1 token)",
                  "match_kept": "share of fg tokens BachVid keeps (in identity fg, sim >= threshold)",
                  "match_kept_accuracy": "match accuracy of the kept tokens"}
        chosen = report["best_match"]
        for name in MATCH_TABLES:
            write_csv(report[name], out / f"{name}.csv")
            heatmap(report[name], out / f"{name}.png", f"{titles[name]}, {report['stories']} shots",
                    (chosen["step"], chosen["layers"]) if name == "match_accuracy" else None, "share")
            written += [out / f"{name}.csv", out / f"{name}.png"]
    return written


# The attention-mass probe -----------------------------------------------------------------------------

def injected_mass(query, key, groups) -> list[float]:
    """Per key group: the softmax share its queries put on the group's (injected) keys, given
    their own keys, mean over heads and queries.

    query, key: (H, N, D) rotated queries and own keys of one row (what `VideoState.probe` sees);
    groups: its KeyGroups (keys already positioned, `bias` added to their logits). Computed in
    float32 from the logits, as the injected attention does: share = sum_inj e^l / sum_all e^l."""
    import torch

    scale = query.shape[-1] ** -0.5
    masses = []
    for group in groups:
        if group.queries.numel() == 0 or group.keys.shape[1] == 0:
            masses.append(0.0 if group.queries.numel() else float("nan"))
            continue
        q = query[:, group.queries].float()
        own = q @ key.float().transpose(1, 2) * scale
        injected = q @ group.keys.to(q.device).float().transpose(1, 2) * scale + float(group.bias)
        top = torch.logsumexp(injected, dim=-1)
        total = torch.logsumexp(torch.cat([own, injected], dim=-1), dim=-1)
        masses.append(float(torch.exp(top - total).mean()))
    return masses


def injected_spread(query, key, group, grid: tuple[int, int, int]) -> dict | None:
    """Where in the identity a query set's attention on its injected keys goes: the attention-weighted
    spatial distance (tokens, Chebyshev in h and w, any latent frame) from each query to the injected
    keys' sources, and the share of that attention on keys at the query's own (h, w); each beside the
    value a spatially uniform attention over the same keys would give. A copy that keeps per-place
    detail needs attention near the query's place (distance ~0, own share ~1); near the uniform values
    the injection hands every query the same average of the identity's tokens.

    query, key: (H, N, D) rotated queries and own keys of one row; group: a KeyGroup with `sources`;
    grid: (latent frames, h, w). None when the group has no queries, keys or sources."""
    import torch

    if group.sources is None or group.queries.numel() == 0 or group.keys.shape[1] == 0:
        return None
    frames, height, width = grid
    text = key.shape[1] - frames * height * width  # text tokens come first in the sequence
    queries, sources = group.queries.cpu() - text, group.sources.cpu() - text
    video_queries, video_keys = queries >= 0, sources >= 0  # places exist for video tokens only
    if not video_queries.any() or not video_keys.any():
        return None
    q = query[:, group.queries[video_queries.to(group.queries.device)]].float()
    scale = q.shape[-1] ** -0.5
    logits = q @ group.keys[:, video_keys.to(group.keys.device)].to(q.device).float().transpose(1, 2) * scale
    weights = torch.softmax(logits, dim=-1).mean(0)  # within the injected keys (their total is the mass)
    queries, sources = queries[video_queries], sources[video_keys]
    qh, qw = (queries % (height * width)) // width, queries % width
    sh, sw = (sources % (height * width)) // width, sources % width
    distance = torch.maximum((qh[:, None] - sh).abs(), (qw[:, None] - sw).abs()).float()
    same = (distance == 0).float()
    weights = weights.cpu()
    return {"distance": float((weights * distance).sum(-1).mean()), "distance_uniform": float(distance.mean()),
            "own_place": float((weights * same).sum(-1).mean()), "own_place_uniform": float(same.mean(-1).mean())}


class MassProbe:
    """`Instruments.probe` factory that averages, per shot, the attention mass on injected keys per
    (kind, step, layer), where kind is "background" or "foreground" (the plan's injection order:
    background first when the background is shared, then the matched foreground).

    After a run, `table(kind)` -> {step: {layer: mean over the shots}}; `per_video` keeps each
    shot's own table; `share(i, kind)` the injected keys' share of all keys a group's queries see
    (the mass a uniform attention would give them)."""

    def __init__(self, shared_background: bool = True, grid: tuple[int, int, int] | None = None):
        self.kinds = ("background", "foreground") if shared_background else ("foreground",)
        self.grid = grid  # with a token grid, also where the injected mass goes (`injected_spread`)
        self.per_video: list[dict] = []
        self.shares: list[dict] = []
        self.spreads: list[dict] = []

    def __call__(self, video):
        sums: dict = {}
        shares: dict = {}
        spreads: dict = {}
        self.per_video.append(sums)
        self.shares.append(shares)
        self.spreads.append(spreads)

        def probe(step, layer, query, key, groups):
            # One kind may come in several groups (a windowed background injection: one per tile):
            # its mass and share are the means over all of its queries.
            weighted: dict = {}
            for i, (group, mass) in enumerate(zip(groups, injected_mass(query, key, groups))):
                kind = group.kind or self.kinds[i]
                n, m = group.queries.numel(), group.keys.shape[1]
                total = weighted.setdefault(kind, [0.0, 0.0, 0])
                if mass == mass:  # not NaN (a group without queries)
                    total[0] += mass * n
                    total[1] += m / (m + key.shape[1]) * n
                    total[2] += n
                spread = injected_spread(query, key, group, self.grid) if self.grid else None
                if spread is not None:
                    spreads.setdefault(kind, {}).setdefault(layer, []).append(spread)
            for kind, (mass, share, n) in weighted.items():
                sums.setdefault(kind, {}).setdefault(step, {}).setdefault(layer, []).append(mass / n if n else float("nan"))
                if n:
                    shares.setdefault(kind, []).append(share / n)

        return probe

    def spread(self, index: int, kind: str) -> dict:
        """Shot `index`'s `injected_spread` per layer, mean over the injected steps: {layer: {...}}."""
        import numpy as np

        return {layer: {name: float(np.mean([s[name] for s in values])) for name in values[0]}
                for layer, values in sorted(self.spreads[index].get(kind, {}).items())}

    def share(self, index: int, kind: str) -> float | None:
        """The injected keys' share of all keys the group's queries see (shot `index`): the mass a
        uniform attention would give them."""
        values = self.shares[index].get(kind)
        return float(sum(values) / len(values)) if values else None

    def video_table(self, index: int, kind: str) -> dict:
        import numpy as np

        return {s: {l: float(np.nanmean(v)) for l, v in row.items()}
                for s, row in self.per_video[index].get(kind, {}).items()}

    def table(self, kind: str) -> dict:
        import numpy as np

        merged: dict = {}
        for i in range(len(self.per_video)):
            for s, row in self.video_table(i, kind).items():
                for l, v in row.items():
                    merged.setdefault(s, {}).setdefault(l, []).append(v)
        return {s: {l: float(np.nanmean(v)) for l, v in row.items()} for s, row in merged.items()}


# The command --------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="toy-world model folder (default: the shipped one)")
    parser.add_argument("--videos", type=int, default=24,
                        help="videos to generate: N // 2 held-out stories, identity + one shot each (default 24)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the story draw (combinations and seeds)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    parser.add_argument("--fractions", default=None,
                        help="comma-separated schedule fractions to score (default 0.0,0.1,...,0.9)")
    parser.add_argument("--no-matches", action="store_true", help="masks only (no attention outputs kept)")
    parser.add_argument("--mask-rule", choices=MASK_RULES, default="fg_over_bg",
                        help="how a mask is read from the attention scores (BachVidConfig.mask_rule): fg_over_bg "
                             "(the paper) or otsu (each video's Otsu threshold of fg / (fg + bg))")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", required=True, help="folder for report.json, CSVs and PNG heatmaps")


def run(args) -> int:
    import torch

    from ..pipeline import BachVidPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.videos < 2:
        print("bachvid analyze: --videos must be >= 2 (one identity and one shot)")
        return 2
    quiet_loading_bars_off_terminal()
    pipe = BachVidPipeline.from_pretrained(args.model)
    settings = pipe.default_settings()
    if args.steps:
        from dataclasses import replace

        settings = replace(settings, num_inference_steps=args.steps)
    fractions = DEFAULT_FRACTIONS if not args.fractions else tuple(float(x) for x in args.fractions.split(","))
    report = analyze(pipe, args.videos, args.seed, fractions, settings, matches=not args.no_matches, progress=True,
                     mask_rule=args.mask_rule)
    write_outputs(report, Path(args.out))
    best = report["best_mask"]
    print(f"best mask:  {best['span']}, step {best['step']}, layers {best['layers']}: IoU {best['iou']:.3f}"
          f" (default {report['default_mask']['iou']}); its ranking AUC {report['best_mask_ranking']:.3f}"
          " (0.5: chance, no threshold helps)")
    if "best_match" in report:
        m = report["best_match"]
        print(f"best match: step {m['step']}, layers {m['layers']}: accuracy {m['match_accuracy']:.3f}, kept "
              f"{m['match_kept']:.3f}, kept accuracy {m['match_kept_accuracy']}")
    print(f"config: {json.dumps(report['config'])}")
    print(f"wrote {args.out}")
    return 0


def add_analyze(sub) -> None:
    parser = sub.add_parser("analyze", help="layer x step heatmaps of mask IoU and match accuracy on the toy world",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(run=run)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bachvid.toy.analyze", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
