"""The Gradio page: upload (or pick an example) on the left, F's output on the right with its
download button, the tile/size options, a panel saying what the loaded model was trained on,
and the example credits.

One public endpoint, `stylize` (api_name): one image in, one PNG image out, so
`gradio_client.Client(url).predict(handle_file(path), api_name="/stylize")` works. The page's
options travel in a `gr.State`, which Gradio leaves out of the endpoint's signature; API calls
get the defaults. Requests are queued and run one at a time (`concurrency_limit=1`), so two
large uploads never hold memory together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from portrait_toon.web.examples import Example
from portrait_toon.web.handler import DEFAULT_OPTIONS, SIZE_CHOICES, TILE_CHOICES

__all__ = ["API_NAME", "CSS", "build_page", "theme"]

API_NAME = "stylize"
TITLE = "portrait_toon: photo to Webtoon"
# Plain system fonts: the default theme fetches web fonts, which an offline machine cannot.
_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
_MONO = ["ui-monospace", "monospace"]
CSS = """
#model-summary { border-left: 4px solid var(--color-accent); padding-left: 0.8em; }
#model-card { font-size: 0.9em; }
#credits { font-size: 0.8em; opacity: 0.8; }
"""


def theme() -> Any:
    import gradio as gr

    return gr.themes.Default(font=_FONTS, font_mono=_MONO)


def build_page(
    handler: Callable[..., Any],
    *,
    summary: str,
    details: str,
    examples: Sequence[Example] = (),
    default_tile: str = "auto",
    max_queue: int | None = 16,
) -> Any:
    """The page as a `gr.Blocks` (queued, one request at a time); launch it with
    `page.launch(theme=theme(), css=CSS, ...)` (see `tasks/app.py`).

    `handler(upload, options)`: the endpoint's function (`web/handler.py`); `summary` and
    `details`: Markdown of the model panel (`web/model_card.py`); `default_tile`: the tile
    choice the page starts with (and API calls use)."""
    import gradio as gr

    options = dict(DEFAULT_OPTIONS, tile=default_tile)
    # Gradio keeps every upload and result in its cache: hourly, drop those over two hours old
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 7200)) as page:
        gr.Markdown(
            f"# {TITLE}\nUpload a photo of a person (or pick an example below); the stylized "
            "image appears on the right, at the photo's size. Use the download button on the "
            "result to save it as PNG."
        )
        gr.Markdown(summary, elem_id="model-summary")
        with gr.Row(equal_height=True):
            source = gr.Image(
                label="Photo",
                type="filepath",
                sources=["upload", "clipboard"],
                elem_id="input-image",
                height=420,
            )
            result = gr.Image(
                label="Stylized",
                format="png",
                interactive=False,
                buttons=["download", "fullscreen"],
                elem_id="output-image",
                height=420,
            )
        with gr.Row():
            tile = gr.Dropdown(
                list(dict.fromkeys([*TILE_CHOICES, options["tile"]])),
                value=options["tile"],
                label="Tiles",
                info="auto: one pass, or tiles when the photo would exceed the memory budget",
                elem_id="tile-choice",
            )
            size = gr.Dropdown(
                list(SIZE_CHOICES),
                value=options["size"],
                label="Size",
                info="original, or scale the longest side down first (faster)",
                elem_id="size-choice",
            )
            run = gr.Button("Stylize", variant="primary", elem_id="stylize-button")
        state = gr.State(options)
        pickers = []
        groups: dict[str, list[Example]] = {}
        for example in examples:
            groups.setdefault(example.group, []).append(example)
        for group, members in groups.items():
            pickers.append(
                gr.Examples(
                    [[str(example.path)] for example in members],
                    inputs=[source],
                    label=group,
                    examples_per_page=len(members),
                )
            )
        credits = [f"{example.label}: {example.credit}" for example in examples if example.credit]
        if credits:
            gr.Markdown(f"Photo credits: {'; '.join(credits)}.", elem_id="credits")
        with gr.Accordion("The loaded model: file, run and held-out metrics", open=False):
            gr.Markdown(details, elem_id="model-card")

        def set_options(tile_choice: str, size_choice: str) -> dict[str, str]:
            return {"tile": tile_choice, "size": size_choice}

        gr.on(
            [tile.change, size.change],
            set_options,
            inputs=[tile, size],
            outputs=[state],
            api_visibility="private",
            queue=False,
        )
        gr.on(
            [run.click, source.upload],
            handler,
            inputs=[source, state],
            outputs=[result],
            api_name=API_NAME,
            api_description="Stylize one image (PNG out, at the input's size).",
            preprocess=False,
            concurrency_limit=1,
            concurrency_id="stylize",
        )
        for picker in pickers:  # clicking an example stylizes it too
            picker.load_input_event.then(
                handler,
                inputs=[source, state],
                outputs=[result],
                preprocess=False,
                api_visibility="private",
                concurrency_limit=1,
                concurrency_id="stylize",
            )
    page.queue(max_size=max_queue, default_concurrency_limit=1)
    return page
