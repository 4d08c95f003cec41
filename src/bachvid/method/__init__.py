"""BachVid itself, read in this order: identity -> mask -> match -> inject.

- `config`: every knob, with the paper's defaults.
- `prompt`: a prompt's parts and their token spans (which words are the character, the background).
- `plan`: per-step plans, the small state objects that say what each layer does at one step.
- `identity`: what shots need from the identity video (keys, values, masks, match features).
- `mask`: foreground masks read from video-to-text attention.
- `match`: point matches between a shot and its identity.
- `attention`: attention with extra (identity) keys that only some queries may see.
- `latent_lock`: beyond the paper, some of a shot's latents follow the identity's early on.
- `controller`: carries out a step plan at each attention call a backbone hands over.

Nothing here imports a model library or a backbone (tests/test_method_imports.py checks it):
backbones (`bachvid.backbones`) translate their attention layers into `controller.AttentionCall`s.
"""
