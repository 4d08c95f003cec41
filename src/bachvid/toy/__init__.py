"""Research harness, not part of the library: a procedural toy world with ground truth (masks,
body coordinates, the background alone), a pixel evaluator, the recipe that trains the shipped toy
models, and the analyses, benchmarks and results table built on them.

It talks to the core through public interfaces only: `BachVidPipeline`, `BachVidConfig`, the
controller's mask-reader protocol (`method.mask.TextAttentionReader`), `method.config.read_step`
and the world's constants (`toy.world`)."""
