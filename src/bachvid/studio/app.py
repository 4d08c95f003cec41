"""The studio's page: layout and wiring (the work is in `callbacks`, `runner`, `library`)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: a local studio
import gradio as gr  # noqa: E402

from . import callbacks  # noqa: E402
from .runner import Studio  # noqa: E402
from .stories import add_shot, form_text, move_shot, remove_shot  # noqa: E402

EXAMPLE = ("a green meadow", "a red robot", "stands still", [["walks to the left", ""], ["jumps", ""]])
SHOT_HEADERS = ["action", "background (empty: the identity's)"]

CSS = """
#videos video, #baseline video, #masks video, #videos img, #sheet img { image-rendering: pixelated !important; }
#story-errors, #story-errors * { color: #b00020 !important; font-family: monospace; white-space: pre-wrap; }
"""


def model_text(studio: Studio) -> str:
    pipe = studio.pipe
    note = getattr(pipe, "model_note", None)
    return f"Model: **{pipe.model_name}**" + (f" ({note})" if note else "")


def layers_text(config) -> str:
    layers = getattr(config, "vital_layers", None)
    return ",".join(map(str, layers)) if layers else ""


SETTING_NAMES = ("seed", "num_inference_steps", "num_frames", "height", "width", "guidance_scale")


def fill_empty_settings(pipe, values) -> tuple:
    """The page's settings (seed, steps, frames, height, width, guidance, vital layers) with the
    model's defaults in those still empty; typed ones stay. An empty number reaches the server as 0
    (or None): invalid for every setting but the seed, so it takes the default."""
    settings = pipe.default_settings()
    filled = [getattr(settings, n) if not v else v for n, v in zip(SETTING_NAMES, values[:6])]
    return (*filled, values[6] if values[6] else layers_text(pipe.default_config()))


def build(studio: Studio) -> gr.Blocks:
    """The studio's page for one model."""
    if studio.ready:
        defaults, config = studio.pipe.default_settings(), studio.pipe.default_config()
    else:  # the page is served while the model loads; the page's load event fills these in
        defaults = config = None
    cancels = callbacks.Cancels()  # each session's queued and running generations' cancel flags

    def default(what, name):
        return getattr(what, name) if what is not None else None

    with gr.Blocks(title="bachvid studio") as demo:
        gr.Markdown("# bachvid studio\nWrite a story: the first line makes the identity video, every further "
                    "line is a shot that keeps its character (and background, unless it switches).")
        model_line = gr.Markdown(model_text(studio) if studio.ready else "Model: *loading...*", elem_id="model")
        with gr.Row():
            with gr.Column(scale=3):
                name = gr.Textbox(label="Story name (its folder)", value="story-000", elem_id="story-name")
                with gr.Accordion("Write with the form (it fills in the story text below)", open=True):
                    with gr.Row():
                        background = gr.Textbox(label="Background", value=EXAMPLE[0], elem_id="form-background")
                        character = gr.Textbox(label="Character", value=EXAMPLE[1], elem_id="form-character")
                        identity = gr.Textbox(label="Identity action (the first video)", value=EXAMPLE[2],
                                              elem_id="form-identity")
                    shots = gr.Dataframe(value=EXAMPLE[3], headers=SHOT_HEADERS, column_count=(2, "fixed"),
                                         label="Shots (click a row to move or remove it)", interactive=True,
                                         type="array", elem_id="form-shots")
                    selected = gr.State(None)
                    with gr.Row():
                        add_btn = gr.Button("Add shot", size="sm")
                        up_btn = gr.Button("Move up", size="sm")
                        down_btn = gr.Button("Move down", size="sm")
                        remove_btn = gr.Button("Remove", size="sm")
                story = gr.Textbox(label="Story (text form, as in a .txt story file: background # character # "
                                         "action per line; paste one here)", lines=5, elem_id="story-text",
                                   value=form_text(*EXAMPLE))
                errors = gr.Markdown(elem_id="story-errors")
            with gr.Column(scale=2):
                with gr.Accordion("Settings (the model's defaults)", open=True):
                    with gr.Row():
                        seed = gr.Number(default(defaults, 'seed'), label="Seed", precision=0,
                                         info="identity's noise; shots use it too or seed + 1 + i (the model's shot_seeds)")
                        steps = gr.Number(default(defaults, 'num_inference_steps'), label="Steps", precision=0,
                                          info="denoising steps: fewer is faster and rougher", elem_id="steps")
                        frames = gr.Number(default(defaults, 'num_frames'), label="Frames", precision=0,
                                           info="frames per video")
                    with gr.Row():
                        height = gr.Number(default(defaults, 'height'), label="Height", precision=0,
                                           info="pixels; a multiple of the model's patch size")
                        width = gr.Number(default(defaults, 'width'), label="Width", precision=0, info="pixels")
                        guidance = gr.Number(default(defaults, 'guidance_scale'), label="Guidance",
                                             info="classifier-free guidance: how closely the text is followed")
                    shared = gr.Checkbox(default(config, 'shared_background') is not False, label="Shared background",
                                         info="inject the identity's background; off: only the character carries over")
                    merge = gr.Checkbox(default(config, 'token_merge') is not False, label="Token merge",
                                        info="blend matched character tokens toward the identity's")
                    lock = gr.Checkbox(bool(default(config, 'background_latents_until')), label="Lock the background",
                                       info="beyond the paper: the shots' latents are pulled toward the identity's "
                                            "(the model's own background lock, else for the first half of the "
                                            "steps); closer backgrounds")
                    vital = gr.Textbox(layers_text(config),
                                       label="Vital layers",
                                       info="blocks where the identity's keys and values are injected, e.g. 0-4 "
                                            "(empty: the model's default)")
                    mode = gr.Dropdown(["auto", "cache", "replay", "lockstep"], value="auto", label="Identity mode",
                                       info="how shots read the identity; all give the same videos")
                    want_baseline = gr.Checkbox(False, label="Vanilla baseline too",
                                                info="the same story and seeds without BachVid, to compare")
                with gr.Accordion("Saved characters", open=False, elem_id="characters"):
                    use_character = gr.Dropdown(["", *callbacks.character_names(studio)], value="",
                                                label="Give the shots a saved character",
                                                info="its identity replaces the story's first line")
                    character_gallery = gr.Gallery(callbacks.character_gallery(studio), label="Library",
                                                   columns=4, height=200, object_fit="contain",
                                                   elem_id="character-gallery")
                    with gr.Row():
                        character_name = gr.Textbox(label="Save this story's identity as", placeholder="robot",
                                                    elem_id="character-name")
                        save_btn = gr.Button("Save character", elem_id="save-character")
                    character_message = gr.Markdown(elem_id="character-message")
        with gr.Row():
            generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
            cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel")
            download = gr.DownloadButton("Download zip", value=None, interactive=False, elem_id="download")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            videos = gr.Gallery(label="Identity and shots (BachVid)", columns=3, height=300, elem_id="videos")
            masks = gr.Gallery(label="Foreground masks (red)", columns=3, height=300, elem_id="masks")
        with gr.Row():
            baseline = gr.Gallery(label="Vanilla baseline (same seeds, no BachVid)", columns=3, height=300,
                                  elem_id="baseline", visible=False)
            sheet = gr.Image(label="Contact sheet", type="filepath", interactive=False, height=300, elem_id="sheet")

        # the form writes the story text; the text is checked as it changes -------------------------
        form = [background, character, identity, shots]
        for part in form:
            part.change(form_text, form, story, queue=False, show_progress="hidden")
        for part in (story, name):
            part.change(lambda text, title: callbacks.check_story(studio, text, title), [story, name], errors,
                        queue=False, show_progress="hidden")

        def pick(evt: gr.SelectData):
            return evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index

        shots.select(pick, None, selected, queue=False)
        add_btn.click(lambda rows: add_shot(rows), shots, shots, queue=False)
        remove_btn.click(lambda rows, i: (remove_shot(rows, i), None), [shots, selected], [shots, selected],
                         queue=False)
        up_btn.click(lambda rows, i: move_shot(rows, i, -1), [shots, selected], [shots, selected], queue=False)
        down_btn.click(lambda rows, i: move_shot(rows, i, +1), [shots, selected], [shots, selected], queue=False)

        # generation: one at a time for this model (the queue shows the others their place) ------------
        inputs = [story, name, seed, steps, frames, height, width, guidance, shared, merge, lock, vital, mode,
                  want_baseline, use_character]
        outputs = [status, errors, videos, masks, baseline, sheet, download]

        def shown(result: dict):
            return (result["status"], result["errors"], result["videos"], result["masks"],
                    gr.Gallery(value=result["baseline"], visible=bool(result["baseline"])), result["sheet"],
                    gr.DownloadButton(value=result["zip"], interactive=bool(result["zip"])))

        def run(text, title, seed_, steps_, frames_, height_, width_, guidance_, shared_, merge_, lock_, vital_,
                mode_, want_baseline_, character_, request: gr.Request):
            session = request.session_hash or "local"
            cancel = cancels.take(session)
            values = dict(seed=seed_, num_inference_steps=steps_, num_frames=frames_, height=height_, width=width_,
                          guidance_scale=guidance_)
            knobs = dict(shared_background=shared_, token_merge=merge_, background_lock=lock_, vital_layers=vital_,
                         identity_mode=mode_)
            try:
                for result in callbacks.generate(studio, session, text, title, values, knobs, want_baseline_,
                                                 character_ or None, cancel):
                    yield shown(result)
            finally:
                cancel.set()
                cancels.done(session, cancel)

        def queued(request: gr.Request):
            cancels.arm(request.session_hash or "local")  # before the queue: Cancel reaches a waiting run

        generate_btn.click(queued, None, None, queue=False).then(
            run, inputs, outputs, concurrency_limit=1, concurrency_id="model", show_progress="minimal")

        def stop(request: gr.Request):
            if cancels.cancel(request.session_hash or "local"):
                return "**Cancelling** (a waiting generation will not start; a running one stops at the next step)..."
            return gr.update()

        cancel_btn.click(stop, None, status, queue=False)

        def save(text, title, character_name_, seed_, steps_, frames_, height_, width_, guidance_, shared_,
                 merge_, vital_):
            values = dict(seed=seed_, num_inference_steps=steps_, num_frames=frames_, height=height_, width=width_,
                          guidance_scale=guidance_)
            knobs = dict(shared_background=shared_, token_merge=merge_, vital_layers=vital_)
            message = callbacks.save_character(studio, text, title, character_name_, values, knobs)
            return (message, callbacks.character_gallery(studio),
                    gr.Dropdown(choices=["", *callbacks.character_names(studio)]))

        save_btn.click(save, [story, name, character_name, seed, steps, frames, height, width, guidance, shared,
                              merge, vital], [character_message, character_gallery, use_character],
                       concurrency_limit=1, concurrency_id="model")

        def choose(name_):
            return callbacks.character_story(studio, name_) if name_ else gr.update()

        use_character.change(choose, use_character, story, queue=False)
        demo.load(lambda: (callbacks.character_gallery(studio),
                           gr.Dropdown(choices=["", *callbacks.character_names(studio)])),
                  None, [character_gallery, use_character], queue=False)

        numbers = [seed, steps, frames, height, width, guidance]

        def loaded():
            """Waits while the model loads; then its name."""
            studio.pipe
            return model_text(studio)

        def fill(*values):
            """Chained after `loaded`, so it reads the fields as they are once the model is there:
            values typed while it loaded stay."""
            return fill_empty_settings(studio.pipe, values)

        if not studio.ready:
            demo.load(loaded, None, model_line, queue=False).then(
                fill, [*numbers, vital], [*numbers, vital], queue=False)
    return demo


def serve(args, started: float | None = None) -> int:
    """Serve the page at once, load the model meanwhile (the page fills in its defaults when it is
    loaded), and serve until interrupted."""
    from concurrent.futures import Future

    from .. import cli

    started = started or time.perf_counter()
    out = Path(args.out).resolve()
    loading: Future = Future()
    studio = Studio(loading, out, Path(args.characters).resolve() if args.characters else None,
                    command=getattr(args, "command_line", None))
    demo = build(studio)
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name=args.host, server_port=args.port or None, prevent_thread_lock=True, show_error=True,
                quiet=True, allowed_paths=[str(out), str(studio.library.folder)], ssr_mode=False, css=CSS)
    print(f"bachvid studio: {demo.local_url} (served {time.perf_counter() - started:.1f} s after start; "
          f"loading the model; stories go to {out})", flush=True)
    try:
        try:
            pipe = cli._load_pipeline(args)
        except (OSError, ValueError) as error:
            loading.set_exception(error)
            print(f"error: cannot load the model: {error}", file=sys.stderr)
            return 2
        loading.set_result(pipe)
        print(f"model {pipe.model_name} ready ({time.perf_counter() - started:.1f} s after start)", flush=True)
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return 0
