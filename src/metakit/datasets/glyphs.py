"""Glyphs: an Omniglot-like few-shot dataset rendered from the fonts that ship inside matplotlib.

Every machine that has matplotlib has these fonts, so this dataset needs no download. The mapping
to Omniglot is:

* alphabets -> Unicode blocks (``class_groups``),
* characters -> letter code points (Unicode general category ``L*``; ``class_names`` such as
  ``"U+0041 LATIN CAPITAL LETTER A"``),
* drawers -> a font file plus a seeded random affine / stroke-width jitter, ``drawers`` images
  per character (20 by default, like Omniglot's 20 drawers).

A code point is kept only if at least ``min_fonts`` of :data:`FONT_FILES` have a *real* glyph for
it: a font's character map listing the code point is not enough, since some fonts map code points
to empty or ``.notdef`` placeholder glyphs, so each glyph is rendered and rejected when the bitmap
is empty or identical to that font's missing-glyph bitmap. Blocks with fewer than ``min_letters``
such letters are dropped, so every group is big enough to be useful on its own in a group split.

Two results are cached under ``metakit.utils.cache_dir("glyphs")``: the glyph-coverage scan
(JSON) and the rendered dataset (compressed ``.npz``). Both are written atomically and are keyed
by everything that changes their content, so a stale or half-written file is never read; a file
that fails to load is rebuilt.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import numbers
import sys
import time
import unicodedata
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from metakit.datasets.base import ClassDataset
from metakit.errors import MetakitError
from metakit.utils import atomic_path, cache_dir, write_json

__all__ = ["FONT_FILES", "block_of", "glyphs_status", "load_glyphs"]

#: Font files (inside ``matplotlib/mpl-data/fonts/ttf``) that the glyphs are rendered from. Left
#: out on purpose: ``LastResortHE`` (one placeholder per block), the ``cm*10`` fonts (TeX
#: encodings, not Unicode letters), ``STIXSiz*`` / ``STIXNonUni*`` (size variants and unencoded
#: symbols) and the ``*Display`` fonts (almost empty).
FONT_FILES: tuple[str, ...] = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
)

# Bump when the scan or the rendering changes, so old cache files are not reused.
FORMAT_VERSION = 1

# Unicode blocks (start, end, name) from Blocks.txt: every block holding a letter that any of
# FONT_FILES maps. Python's unicodedata has no block lookup, and embedding the table keeps group
# names stable whatever fontTools version is installed.
_BLOCKS: tuple[tuple[int, int, str], ...] = (
    (0x0000, 0x007F, "Basic Latin"),
    (0x0080, 0x00FF, "Latin-1 Supplement"),
    (0x0100, 0x017F, "Latin Extended-A"),
    (0x0180, 0x024F, "Latin Extended-B"),
    (0x0250, 0x02AF, "IPA Extensions"),
    (0x02B0, 0x02FF, "Spacing Modifier Letters"),
    (0x0370, 0x03FF, "Greek and Coptic"),
    (0x0400, 0x04FF, "Cyrillic"),
    (0x0500, 0x052F, "Cyrillic Supplement"),
    (0x0530, 0x058F, "Armenian"),
    (0x0590, 0x05FF, "Hebrew"),
    (0x0600, 0x06FF, "Arabic"),
    (0x07C0, 0x07FF, "NKo"),
    (0x0E80, 0x0EFF, "Lao"),
    (0x10A0, 0x10FF, "Georgian"),
    (0x1400, 0x167F, "Unified Canadian Aboriginal Syllabics"),
    (0x1680, 0x169F, "Ogham"),
    (0x1D00, 0x1D7F, "Phonetic Extensions"),
    (0x1D80, 0x1DBF, "Phonetic Extensions Supplement"),
    (0x1E00, 0x1EFF, "Latin Extended Additional"),
    (0x1F00, 0x1FFF, "Greek Extended"),
    (0x2070, 0x209F, "Superscripts and Subscripts"),
    (0x2100, 0x214F, "Letterlike Symbols"),
    (0x2150, 0x218F, "Number Forms"),
    (0x2C60, 0x2C7F, "Latin Extended-C"),
    (0x2D00, 0x2D2F, "Georgian Supplement"),
    (0x2D30, 0x2D7F, "Tifinagh"),
    (0x3040, 0x309F, "Hiragana"),
    (0xA4D0, 0xA4FF, "Lisu"),
    (0xA640, 0xA69F, "Cyrillic Extended-B"),
    (0xA700, 0xA71F, "Modifier Tone Letters"),
    (0xA720, 0xA7FF, "Latin Extended-D"),
    (0xFB00, 0xFB4F, "Alphabetic Presentation Forms"),
    (0xFB50, 0xFDFF, "Arabic Presentation Forms-A"),
    (0xFE70, 0xFEFF, "Arabic Presentation Forms-B"),
    (0x10300, 0x1032F, "Old Italic"),
    (0x1D400, 0x1D7FF, "Mathematical Alphanumeric Symbols"),
    (0x1EE00, 0x1EEFF, "Arabic Mathematical Alphabetic Symbols"),
)
_BLOCK_STARTS = [b[0] for b in _BLOCKS]

# Defaults, shared by load_glyphs and glyphs_status.
_DEFAULTS: dict[str, int] = {
    "image_size": 28,
    "drawers": 20,
    "seed": 0,
    "min_fonts": 3,
    "min_letters": 20,
}
# Measured first build at the defaults (scan + render) on a 2-core CPU; shown by glyphs_status.
_FIRST_BUILD_SECONDS = 25

# The scan renders at this pixel size: large enough that a real glyph is never an empty bitmap,
# small enough that scanning every letter of every font takes about a second.
_SCAN_SIZE = 32
# A code point no font here maps (plane-16 private use): rendering it draws the .notdef glyph.
_UNMAPPED = 0x10FFFD
# Rendering happens at _SUPERSAMPLE x the output size, then is area-averaged down (anti-aliasing).
_SUPERSAMPLE = 4
# A glyph's larger side fills this fraction of the frame before jitter, leaving room for rotation,
# shear, scale-up and translation without clipping.
_FILL = 0.62
# Small glyphs (modifier letters, small capitals) are scaled up at most this much relative to the
# font's nominal size: filling the frame with them would make e.g. U+1D00 and U+0041 identical.
_MAX_UPSCALE = 1.5
# Jitter ranges (uniform): rotation in degrees, log-scale, anisotropy (log), shear, translation as
# a fraction of the frame, and stroke change in supersampled pixels at 28 px output (negative thins).
_ROTATION_DEG = 12.0
_LOG_SCALE = 0.15
_LOG_ASPECT = 0.08
_SHEAR = 0.2
_TRANSLATE = 0.06
_STROKES = (-1, 0, 0, 1, 2)
# Thinning is undone for an image if it would remove more ink than this (hairline serifs vanish).
_MIN_INK_KEPT = 0.6


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _versions() -> dict[str, str]:
    """Library versions that can change the scan or the bitmaps.

    FreeType comes with Pillow; torch's resampling and numpy's random streams decide the jitter, so
    an upgrade of either re-renders rather than mixing bits from two versions.
    """
    import matplotlib
    import PIL

    return {
        "format": str(FORMAT_VERSION),
        "matplotlib": matplotlib.__version__,
        "pillow": PIL.__version__,
        "unicode": unicodedata.unidata_version,
        "torch": torch.__version__.split("+")[0],
        "numpy": np.__version__,
    }


def _key_hash(extra: dict[str, Any]) -> str:
    blob = json.dumps({**_versions(), "fonts": FONT_FILES, **extra}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _scan_path() -> Path:
    return cache_dir("glyphs") / f"scan-{_key_hash({'scan_size': _SCAN_SIZE})}.json"


def _dataset_path(image_size: int, drawers: int, seed: int, min_fonts: int, min_letters: int) -> Path:
    params = {
        "image_size": image_size, "drawers": drawers, "seed": seed,
        "min_fonts": min_fonts, "min_letters": min_letters,
    }
    # Readable parameters for people browsing the cache; the hash covers versions and constants.
    name = f"glyphs-{image_size}px-{drawers}d-seed{seed}-f{min_fonts}-l{min_letters}"
    return cache_dir("glyphs") / f"{name}-{_key_hash(params)}.npz"


def block_of(cp: int) -> str | None:
    """Name of the Unicode block holding code point ``cp``, or ``None`` if not in the table."""
    i = bisect.bisect_right(_BLOCK_STARTS, cp) - 1
    if i >= 0 and _BLOCKS[i][0] <= cp <= _BLOCKS[i][1]:
        return _BLOCKS[i][2]
    return None


def _class_name(cp: int) -> str:
    return f"U+{cp:04X} {unicodedata.name(chr(cp), 'UNNAMED LETTER')}"


@contextmanager
def _progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A transient rich progress bar on stderr (silent when stderr is not a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def _load_font(name: str, size: int) -> Any:
    from PIL import ImageFont

    # BASIC layout: no shaping engine, so the bitmaps do not depend on whether libraqm is present.
    return ImageFont.truetype(str(_font_dir() / name), size, layout_engine=ImageFont.Layout.BASIC)


def _bitmap(font: Any, cp: int) -> np.ndarray:
    """Anti-aliased bitmap (uint8, ink high) of one code point, as Pillow/FreeType render it."""
    mask = font.getmask(chr(cp), mode="L")
    width, height = mask.size
    return np.frombuffer(bytes(mask), np.uint8).reshape(height, width)


def _charmaps() -> list[dict[int, int]]:
    """Each font's character map (code point -> glyph index), in FONT_FILES order."""
    from matplotlib.ft2font import FT2Font

    font_dir = _font_dir()
    missing = [n for n in FONT_FILES if not (font_dir / n).is_file()]
    if missing:
        raise MetakitError(
            f"glyphs: font file(s) {missing} are missing from {font_dir}; reinstall matplotlib "
            "(pip install --force-reinstall matplotlib)."
        )
    return [FT2Font(str(font_dir / n)).get_charmap() for n in FONT_FILES]


def _scan_fonts() -> dict[int, list[int]]:
    """Find, for every letter, which of :data:`FONT_FILES` have a real glyph for it.

    A glyph is real if the font maps the code point to a glyph other than ``.notdef`` (index 0)
    and the rendered bitmap is neither empty nor identical to the font's missing-glyph bitmap.

    Returns ``{code point: [indices into FONT_FILES]}`` for letters with at least one real glyph.
    """
    coverage: dict[int, list[int]] = {}
    charmaps = _charmaps()
    with _progress("scanning font glyphs", sum(len(c) for c in charmaps)) as advance:
        for index, (name, charmap) in enumerate(zip(FONT_FILES, charmaps)):
            font = _load_font(name, _SCAN_SIZE)
            notdef = _bitmap(font, _UNMAPPED) if _UNMAPPED not in charmap else None
            for cp, glyph_index in sorted(charmap.items()):
                if glyph_index == 0 or not unicodedata.category(chr(cp)).startswith("L"):
                    continue
                bitmap = _bitmap(font, cp)
                if not bitmap.any():
                    continue
                if notdef is not None and bitmap.shape == notdef.shape and np.array_equal(bitmap, notdef):
                    continue
                coverage.setdefault(cp, []).append(index)
            advance(len(charmap))
    return coverage


def _coverage() -> dict[int, list[int]]:
    """The font scan, from the JSON cache when present and readable, else scanned and cached."""
    path = _scan_path()
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data["fonts"] != list(FONT_FILES):
                raise ValueError("font list differs")
            return {int(cp): [int(i) for i in fonts] for cp, fonts in data["coverage"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # unreadable or stale: scan again and overwrite it
    coverage = _scan_fonts()
    data = {
        "versions": _versions(),
        "fonts": list(FONT_FILES),
        "coverage": {str(cp): fonts for cp, fonts in sorted(coverage.items())},
    }
    try:
        write_json(path, data)
    except OSError as exc:
        warnings.warn(f"glyphs: could not cache the font scan at {path}: {exc}", stacklevel=2)
    return coverage


def _select(
    coverage: dict[int, list[int]], min_fonts: int, min_letters: int
) -> list[tuple[int, str, list[int]]]:
    """Letters with ``min_fonts`` real glyphs, in blocks with ``min_letters`` such letters.

    Returns ``(code point, block, font indices)`` sorted by code point (so blocks are contiguous).
    """
    by_block: dict[str, list[tuple[int, str, list[int]]]] = {}
    for cp in sorted(coverage):
        fonts = coverage[cp]
        block = block_of(cp)
        # The block table covers every letter these fonts map; an unknown block can only come
        # from a newer font set, and such letters are left out rather than grouped wrongly.
        if len(fonts) >= min_fonts and block is not None:
            by_block.setdefault(block, []).append((cp, block, fonts))
    return [c for chars in by_block.values() if len(chars) >= min_letters for c in chars]


def _source(font: Any, cp: int, out_px: int) -> tuple[np.ndarray, float]:
    """Tight bitmap of ``cp`` at nominal size ``out_px`` and the scale that normalises its size."""
    bitmap = _bitmap(font, cp)
    rows = np.flatnonzero(bitmap.any(axis=1))
    cols = np.flatnonzero(bitmap.any(axis=0))
    if not len(rows):
        raise ValueError(f"{font.getname()} has no glyph for U+{cp:04X}; pass only fonts the scan found")
    crop = bitmap[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = min(_FILL * out_px / max(crop.shape), _MAX_UPSCALE)
    return crop, scale


def _jitter_thetas(
    rng: np.random.Generator,
    sources: Sequence[tuple[np.ndarray, float]],
    which: np.ndarray,
    src_px: int,
    out_px: int,
) -> np.ndarray:
    """Random affine matrices, one per drawer, in ``affine_grid``'s convention.

    ``affine_grid`` maps *output* normalised coordinates to *source* ones, so each matrix is the
    inverse of the forward map (glyph pixels about the crop centre -> output pixels about the
    frame centre) ``out = norm * Rotation @ Shear @ diag(sx, sy) @ g + shift``.
    """
    n = len(which)
    angle = np.deg2rad(rng.uniform(-_ROTATION_DEG, _ROTATION_DEG, n))
    log_scale = rng.uniform(-_LOG_SCALE, _LOG_SCALE, n)
    log_aspect = rng.uniform(-_LOG_ASPECT, _LOG_ASPECT, n)
    shear = rng.uniform(-_SHEAR, _SHEAR, n)
    shift = rng.uniform(-_TRANSLATE, _TRANSLATE, (n, 2)) * out_px
    cos, sin, zero, one = np.cos(angle), np.sin(angle), np.zeros(n), np.ones(n)
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shearing = np.stack([np.stack([one, shear], -1), np.stack([zero, one], -1)], -2)
    scaling = np.stack([np.exp(log_scale + log_aspect), np.exp(log_scale - log_aspect)], -1)
    norm = np.array([sources[w][1] for w in which])
    forward = norm[:, None, None] * (rotation @ shearing) * scaling[:, None, :]
    inverse = np.linalg.inv(forward)
    # Each crop sits at the top-left of the src_px canvas; offset of its centre from the canvas
    # centre in pixels (x, y).
    shapes = np.array([sources[w][0].shape for w in which], dtype=np.float64)
    centre = shapes[:, ::-1] / 2 - src_px / 2
    # Source normalised u = (inverse @ (v * out_px / 2 - shift) + centre) / (src_px / 2).
    thetas = np.empty((n, 2, 3))
    thetas[:, :, :2] = inverse * (out_px / src_px)
    thetas[:, :, 2] = (centre - (inverse @ shift[:, :, None])[:, :, 0]) / (src_px / 2)
    return thetas


def _max_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Square max filter of side ``2 * radius + 1`` (zero outside the image).

    Separable shifted maxima: the same result as ``max_pool2d(stride=1)``, which is ~50x slower
    on CPU for these sizes.
    """
    height, width = x.shape[-2:]
    padded = F.pad(x, (radius, radius, radius, radius))
    rows = padded[..., :, :width]
    for d in range(1, 2 * radius + 1):
        rows = torch.maximum(rows, padded[..., :, d : d + width])
    out = rows[..., :height, :]
    for d in range(1, 2 * radius + 1):
        out = torch.maximum(out, rows[..., d : d + height, :])
    return out


def _stroke(images: torch.Tensor, change: np.ndarray, unit: float) -> torch.Tensor:
    """Thicken (max filter) or thin (min filter) each image's strokes by ``change[i] * unit`` pixels."""
    out = images.clone()
    for amount in sorted(set(change.tolist()) - {0}):
        radius = max(1, round(abs(amount) * unit))
        idx = torch.from_numpy(np.flatnonzero(change == amount))
        x = images[idx]
        if amount > 0:
            y = _max_filter(x, radius)
        else:
            y = -_max_filter(-x, radius)
            # Thin strokes would vanish: keep the original where thinning removes too much ink.
            kept = y.sum(dim=(1, 2, 3)) >= _MIN_INK_KEPT * x.sum(dim=(1, 2, 3))
            y = torch.where(kept[:, None, None, None], y, x)
        out[idx] = y
    return out


def _render_char(
    cp: int, font_ids: Sequence[int], image_size: int, drawers: int, seed: int, fonts: dict[int, Any]
) -> np.ndarray:
    """``drawers`` jittered images of one code point: uint8 ``[drawers, 1, image_size, image_size]``.

    ``fonts`` caches the loaded fonts (index into FONT_FILES -> font) between calls.
    """
    out_px = image_size * _SUPERSAMPLE
    rng = np.random.default_rng([seed, cp])
    # Drawers cycle through the character's fonts in a random order: every font is used about
    # equally, and only the fonts actually used are rendered.
    order = rng.permutation(len(font_ids))
    drawer_fonts = [font_ids[order[d % len(font_ids)]] for d in range(drawers)]
    used = sorted(set(drawer_fonts))
    sources = []
    for f in used:
        if f not in fonts:
            fonts[f] = _load_font(FONT_FILES[f], out_px)
        sources.append(_source(fonts[f], cp, out_px))
    which = np.array([used.index(f) for f in drawer_fonts])
    src_px = max(max(crop.shape) for crop, _ in sources)
    canvas = np.zeros((len(sources), 1, src_px, src_px), np.float32)
    for s, (crop, _) in enumerate(sources):
        canvas[s, 0, : crop.shape[0], : crop.shape[1]] = crop / np.float32(255)
    thetas = _jitter_thetas(rng, sources, which, src_px, out_px)
    strokes = rng.choice(np.array(_STROKES), drawers)
    grid = F.affine_grid(torch.from_numpy(thetas).float(), [drawers, 1, out_px, out_px], align_corners=False)
    big = F.grid_sample(
        torch.from_numpy(canvas)[torch.from_numpy(which)], grid,
        mode="bilinear", padding_mode="zeros", align_corners=False,
    )
    big = _stroke(big, strokes, out_px / 112)
    small = F.avg_pool2d(big, _SUPERSAMPLE)
    return (small.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _render(
    chars: Sequence[tuple[int, Sequence[int]]], image_size: int, drawers: int, seed: int
) -> np.ndarray:
    """Render ``drawers`` jittered images per ``(code point, font indices)``.

    Returns uint8 ``[len(chars) * drawers, 1, image_size, image_size]``, class-major. Each
    character draws its randomness from ``(seed, code point)``, so its images do not depend on
    which other characters are rendered.
    """
    images = np.zeros((len(chars) * drawers, 1, image_size, image_size), np.uint8)
    fonts: dict[int, Any] = {}
    threads = torch.get_num_threads()
    # One character is too little work to split across threads: thread start-up and sync made
    # affine_grid ~10x slower with 2 threads than with 1 on a busy 2-core machine.
    torch.set_num_threads(1)
    try:
        with _progress("rendering glyphs", len(chars)) as advance:
            for c, (cp, font_ids) in enumerate(chars):
                drawn = _render_char(cp, font_ids, image_size, drawers, seed, fonts)
                images[c * drawers : (c + 1) * drawers] = drawn
                advance(1)
    finally:
        torch.set_num_threads(threads)
    return images


def _check_int(name: str, value: Any, low: int, high: int | None, hint: str) -> int:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and value >= low and (high is None or value <= high):
        return int(value)
    bound = f"from {low} to {high}" if high is not None else f">= {low}"
    raise MetakitError(f"glyphs: {name} must be an integer {bound}, got {value!r}; {hint}.")


def _validate(image_size: Any, drawers: Any, seed: Any, min_fonts: Any, min_letters: Any) -> tuple[int, ...]:
    return (
        _check_int("image_size", image_size, 8, 128, "use e.g. image_size: 28 (Omniglot-style)"),
        _check_int("drawers", drawers, 1, 100, "use e.g. drawers: 20 (images per character)"),
        _check_int("seed", seed, 0, 2**63 - 1, "use a non-negative seed such as 0"),
        _check_int("min_fonts", min_fonts, 1, len(FONT_FILES), "use e.g. min_fonts: 3"),
        _check_int("min_letters", min_letters, 1, None, "use e.g. min_letters: 20"),
    )


# Everything a damaged cache file can raise while being read; any of them means "render again".
_CACHE_ERRORS = (
    OSError, ValueError, KeyError, EOFError, RuntimeError, zipfile.BadZipFile, zlib.error, MetakitError,
)


def _read_cache(path: Path, image_size: int) -> ClassDataset:
    with np.load(path, allow_pickle=False) as data:
        images = torch.from_numpy(np.ascontiguousarray(data["images"]))
        labels = torch.from_numpy(data["labels"].astype(np.int64))
        names = data["class_names"].tolist()
        groups = data["class_groups"].tolist()
    if (
        len(names) != len(groups)
        or tuple(images.shape[1:]) != (1, image_size, image_size)
        or len(labels) != len(images)
        or (len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(names))
    ):
        raise ValueError(f"inconsistent arrays in {path}")
    return ClassDataset(name="glyphs", inputs=images, labels=labels, class_names=names, class_groups=groups)


def _write_cache(
    path: Path, images: np.ndarray, labels: np.ndarray, names: list[str], groups: list[str]
) -> None:
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            # A file object, not a name: np.savez would otherwise append ".npz" to the temp name.
            np.savez_compressed(
                f, images=images, labels=labels, class_names=np.array(names), class_groups=np.array(groups)
            )
    except OSError as exc:
        warnings.warn(f"glyphs: could not cache the rendered dataset at {path}: {exc}", stacklevel=3)


def load_glyphs(
    image_size: int = 28,
    drawers: int = 20,
    seed: int = 0,
    min_fonts: int = 3,
    min_letters: int = 20,
) -> ClassDataset:
    """Load (rendering and caching on first use) the Glyphs dataset.

    Args:
        image_size: side of the square 1-channel images, 8 to 128 pixels.
        drawers: images per character, each a font file plus random affine and stroke jitter.
        seed: seed of the jitter; the same arguments always give bit-identical images.
        min_fonts: keep a letter only if this many font files have a real glyph for it.
        min_letters: keep a Unicode block only if it has this many kept letters.

    Returns:
        A :class:`ClassDataset` named ``"glyphs"``: uint8 images ``[classes * drawers, 1,
        image_size, image_size]`` with ink 255 on 0, one class per code point
        (``"U+0041 LATIN CAPITAL LETTER A"``), grouped by Unicode block.

    Raises:
        MetakitError: an argument is out of range, or no block is left after filtering.
    """
    image_size, drawers, seed, min_fonts, min_letters = _validate(
        image_size, drawers, seed, min_fonts, min_letters
    )
    path = _dataset_path(image_size, drawers, seed, min_fonts, min_letters)
    if path.exists():
        try:
            return _read_cache(path, image_size)
        except _CACHE_ERRORS:
            pass  # damaged after it was written (writes are atomic): render it again below
    chars = _select(_coverage(), min_fonts, min_letters)
    if not chars:
        raise MetakitError(
            f"glyphs: no Unicode block has {min_letters} letters with real glyphs in {min_fonts} "
            "fonts; lower min_letters or min_fonts (defaults 20 and 3)."
        )
    images = _render([(cp, fonts) for cp, _, fonts in chars], image_size, drawers, seed)
    labels = np.repeat(np.arange(len(chars), dtype=np.int64), drawers)
    names = [_class_name(cp) for cp, _, _ in chars]
    groups = [block for _, block, _ in chars]
    _write_cache(path, images, labels, names, groups)
    return ClassDataset(
        name="glyphs",
        inputs=torch.from_numpy(images),
        labels=torch.from_numpy(labels),
        class_names=names,
        class_groups=groups,
    )


def glyphs_status() -> str:
    """One line on the default Glyphs dataset: cached (where, how many classes) or not yet rendered."""
    path = _dataset_path(**_DEFAULTS)
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as data:
                n_classes = len(data["class_names"])
            return f"rendered locally; cached at {path} ({n_classes} classes)"
        except _CACHE_ERRORS:
            return f"cache at {path} is unreadable; first use re-renders it (~{_FIRST_BUILD_SECONDS}s)"
    return f"not rendered yet; first use renders it (~{_FIRST_BUILD_SECONDS}s) into {path}"


if __name__ == "__main__":  # pragma: no cover - a manual timing aid: python -m metakit.datasets.glyphs
    start = time.perf_counter()
    ds = load_glyphs()
    print(f"{ds.describe()} in {time.perf_counter() - start:.1f}s; {glyphs_status()}", file=sys.stderr)
