"""Which foreground-mask read could reach the truth on a toy model (research probe).

    python scripts/probe_mask_reads.py MODEL [--videos 8] [--threads 1]

Generates `bachvid analyze`'s held-out videos (identity + shot pairs), keeps every layer's text
attention and attention output at steps 3, 6, 12 and 18 of 30, and scores against the truth (the
evaluator's mask on the token grid, opened as the method opens masks):
- text: BachVid's read (fg >= bg, one layer), and the ranking AUC of fg / (fg + bg);
- seeded: each token to the nearer of two prototypes of the layer's attention outputs, the mean
  output of the 5% of tokens with the highest fg / (fg + bg) (averaged over --seed-layers) and
  of the lower half: a read beyond the paper that uses the features the matches use;
- oracle prototypes: the same with the true character's and background's mean outputs (how well
  a prototype read could do with perfect seeds);
- via matches: each shot token takes the identity mask's value at its match (argmax cosine of the
  attention outputs, as the method matches), from the identity's read mask (seed layers) and from
  its true mask: how good shot masks get when only the identity's mask has to be right.
Prints the best single layer of each per step. ~4 min on one CPU thread for 8 videos.
docs/TOY_MODEL.md quotes its figures.
"""
import argparse

import numpy as np
import torch

from bachvid.method.mask import open_mask
from bachvid.pipeline import BachVidPipeline
from bachvid.toy import analyze
from bachvid.toy.evaluate import iou


def share(run, step, layers, span="character"):
    bg, fg = analyze.average_scores([run["scores"][span][step][l] for l in layers])
    return (fg / (fg + bg).clamp_min(1e-12)).numpy()


def normalised(run, step, layer):
    return torch.nn.functional.normalize(run["features"][step, layer].float(), dim=1)


def prototype_read(x, fg_proto, bg_proto, grid):
    return open_mask(torch.from_numpy((x @ fg_proto > x @ bg_proto).reshape(grid)), 3).numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed-layers", default=None, help="layers whose text attention seeds the prototypes "
                        "(default: the model's calibrated mask layers)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = BachVidPipeline.from_pretrained(args.model)
    seeds = ([int(x) for x in args.seed_layers.split(",")] if args.seed_layers
             else sorted(pipe.layers(pipe.default_config()).mask))
    data = analyze.collect(pipe, args.videos, fractions=(0.1, 0.2, 0.4, 0.6), progress=True)
    runs = [r for p in data["pairs"] for r in (p["identity"], p["shot"])]
    layers = range(data["num_layers"])
    print(f"truth: {np.mean([r['truth'].mean() for r in runs]):.1%} of tokens; seed layers {seeds}")
    for step in data["steps"]:
        rows = {"text fg>=bg": {}, "text ranking AUC": {}, "seeded features": {}, "oracle prototypes": {}}
        for layer in layers:
            text, auc, seeded, oracle = [], [], [], []
            for r in runs:
                grid, truth = r["grid"], r["truth"]
                text.append(analyze.mask_iou([r], "character", step, [layer]))
                auc.append(analyze.ranking_auc(share(r, step, [layer]), truth))
                x = r["features"][step, layer].float()
                x = torch.nn.functional.normalize(x - x.mean(0), dim=1).numpy()
                order = share(r, step, seeds).argsort()
                top, low = order[-max(3, len(order) // 20):], order[: len(order) // 2]
                seeded.append(iou(prototype_read(x, x[top].mean(0), x[low].mean(0), grid), truth))
                t = truth.ravel().astype(bool)
                oracle.append(iou(prototype_read(x, x[t].mean(0), x[~t].mean(0), grid), truth))
            for name, values in zip(rows, (text, auc, seeded, oracle)):
                rows[name][layer] = float(np.mean([v for v in values if v is not None]))
            carried, carried_true = [], []
            for p in data["pairs"]:
                identity, shot = p["identity"], p["shot"]
                index = (normalised(shot, step, layer) @ normalised(identity, step, layer).T).argmax(1).numpy()
                read = analyze.layer_mask([identity["scores"]["character"][step][s] for s in seeds], identity["grid"], 3)
                for mask, bucket in ((read, carried), (identity["truth"], carried_true)):
                    moved = torch.from_numpy(mask.ravel()[index].reshape(shot["grid"]))
                    bucket.append(iou(open_mask(moved, 3).numpy(), shot["truth"]))
            rows.setdefault("shot via matches from the read identity mask", {})[layer] = float(np.mean(carried))
            rows.setdefault("... from the true identity mask", {})[layer] = float(np.mean(carried_true))
        print(f"step {step:2d}:\n  " + "\n  ".join(
            f"{name} {max(row.values()):.3f} (layer {max(row, key=row.get)})" for name, row in rows.items()),
            flush=True)


if __name__ == "__main__":
    main()
