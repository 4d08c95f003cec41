"""`bachvid studio`: a local Gradio web studio on the same pipeline and files as the CLI.

Modules, one idea each (none imports gradio but `app`):
- `command`: the CLI subcommand (arguments; gradio is imported only when it runs);
- `stories`: a story from the form or the text form, checked with the CLI's messages;
- `runner`: one generation at a time per model, written with the CLI's own job functions
  (same folder layout and manifest), with progress, cancel and zips;
- `library`: saved characters (.bvid files with a thumbnail);
- `callbacks`: what the page's buttons do, as plain functions (tested without a browser);
- `app`: the page's layout and its wiring to the callbacks.
"""
