"""The demo page: a person drops or picks a photo and sees it translated, in a browser (Gradio).

`build_demo(generators)` returns the page (a `gradio.Blocks`), `cyclegan-demo` serves it. A photo is read
as translate.py reads it (`data.read_image`: EXIF orientation applied, the decode limit) and translated by
`inference.translate_images` within the same memory budget, in tiles when it does not fit whole. Gradio
is an optional dependency (`pip install cyclegan-keras[demo]`), imported only by `build_demo`.
"""

from pathlib import Path

import tensorflow as tf

from cyclegan_keras import data, files
from cyclegan_keras.inference import MemoryBudgetError, default_memory_budget, translate_images

DIRECTION_LABELS = {"a2b": "A → B", "b2a": "B → A"}
# Each direction's example comes from its source domain of the synthetic set (`data.synthetic_images`).
SOURCE_DOMAINS = {"a2b": "A", "b2a": "B"}
EXAMPLE_SIZE = 256


class UploadError(ValueError):
    """An uploaded photo that cannot be translated; the message, one line naming the upload, is shown in the page."""


def translate_photo(generator, path, name=None, max_memory=None, tile_size=None, overlap=None):
    """One photo file translated as translate.py translates it: `(upright input, translation)`, uint8 each.

    Args:
        generator: an image-to-image `keras.Model` (one of `translation.load_generators`).
        path: the image file (JPEG, PNG, GIF or BMP); its EXIF orientation is applied.
        name: how the message of an `UploadError` names the file (the name the user uploaded). Defaults to `path`.
        max_memory, tile_size, overlap: see `inference.translate_images`.

    Returns:
        `(image, translation)`: `(height, width, channels)` uint8 arrays, channels as the generator's.

    Raises:
        UploadError: a file that cannot be decoded, declares too many pixels, or does not fit `max_memory`
            (with `tile_size=0`).
    """
    name = name or str(path)
    try:
        image = data.read_image(path, generator.input_shape[-1]).numpy()
    except data.UnreadableImage as error:
        raise UploadError(f"{name}: {error.reason}") from None
    try:
        output = translate_images(generator, image.astype("float32") / 127.5 - 1.0, 1, max_memory, tile_size, overlap)
    except MemoryBudgetError as error:
        raise UploadError(f"{name}: {error}") from None
    return image, data.to_uint8(output)


def write_examples(folder, directions, channels=3, size=EXAMPLE_SIZE):
    """One synthetic image per direction, from its source domain, as PNGs in `folder`: `[(path, direction)]`.

    The synthetic set is what `python train.py` trains on offline, so a model trained there translates them.
    """
    rows = []
    for direction in directions:
        domain = SOURCE_DOMAINS[direction]
        image = data.synthetic_images(domain, 1, size, channels if channels in (1, 3) else 3, seed=1)[0]
        path = files.write_bytes(Path(folder) / f"synthetic_{domain}.png", tf.io.encode_png(image).numpy())
        rows.append((str(path), direction))
    return rows


def build_demo(generators, examples=(), max_memory=None, tile_size=None, overlap=None, title="CycleGAN demo"):
    """The demo page: an upload (or an example) on the left, its translation on the right; a direction choice.

    Args:
        generators: `{direction: generator}` (`translation.load_generators`); with two, the page lets the
            person choose the direction.
        examples: `(path, direction)` pairs shown under the upload; clicking one translates it that way.
        max_memory, tile_size, overlap: see `inference.translate_images`; the budget, when None, is
            `inference.default_memory_budget()` at each translation.
        title: the page's heading.

    Returns:
        A `gradio.Blocks`; `.launch(...)` serves it (`launch` below does it as `cyclegan-demo` does).
    """
    import gradio as gr

    directions = list(generators)
    budget = files.format_bytes(max_memory or default_memory_budget())

    last = {}  # the latest (upload, direction) and its translation: Gradio fires some changes twice

    def translate(upload, direction):
        # The listener takes the upload as Gradio's file record (preprocess=False): the very bytes sent,
        # EXIF included, read by this package's reader rather than decoded by PIL first.
        if not upload:
            return None
        key = (upload["path"], direction or directions[0])
        if key not in last:
            last.clear()
            try:
                _, output = translate_photo(
                    generators[key[1]],
                    upload["path"],
                    upload.get("orig_name") or Path(upload["path"]).name,
                    max_memory,
                    tile_size,
                    overlap,
                )
                last[key] = output[..., 0] if output.shape[-1] == 1 else output
            except UploadError as error:
                # A message in the page, and no translation left beside the upload it does not belong to.
                gr.Warning(str(error))
                last[key] = None
        return last[key]

    how = (
        "Drop a photo or pick an example: it is translated at its own size and shown on the right "
        f"(EXIF orientation applied; a photo that does not fit the memory budget, {budget} when the page "
        "started, is translated in tiles)."
    )
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(f"# {title}\n{how}")
        direction = gr.Radio(
            [(DIRECTION_LABELS[d], d) for d in directions],
            value=directions[0],
            label="direction",
            visible=len(directions) > 1,
            elem_id="direction",
        )
        with gr.Row(equal_height=True):
            photo = gr.Image(
                type="filepath", image_mode=None, label="photo", height=420, elem_id="photo", buttons=["fullscreen"]
            )
            translated = gr.Image(
                format="png",  # lossless: the page shows the translation's exact pixels
                label="translation",
                interactive=False,
                height=420,
                elem_id="translation",
                buttons=["download", "fullscreen"],
            )
        if examples:
            rows = [[str(path), d] for path, d in examples]
            gr.Examples(rows, inputs=[photo, direction], label="examples", elem_id="examples")
        gr.on(
            [photo.change, direction.change],
            translate,
            inputs=[photo, direction],
            outputs=translated,
            preprocess=False,
            concurrency_limit=1,  # one translation at a time: each may use the whole memory budget
            show_progress="full",
        )
    return page


def launch(page, host="127.0.0.1", port=7860, block=True):
    """Serves `page` on `host:port`, nothing shared or sent out (no share link, no telemetry); `block` waits."""
    page.queue(default_concurrency_limit=1)
    page.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        show_error=True,
        prevent_thread_lock=not block,
    )
    return page
