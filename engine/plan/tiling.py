"""Tile plans: which input windows to run, and which part of each output to keep.

A plan splits the image into *cores* (rectangles of the input that together cover it exactly
once, spread evenly so that no core is a thin sliver) and gives each core a *window*: the core
grown by a context margin `pad` on every side. All windows of a plan have one shape, so tiles
stack into batches: where a window would leave the image it slides back inside (reading more
context on the inner side instead), and it is clipped only when the image itself is smaller.

Crop merge keeps only the core of each window's output: with `pad` at least the model's
receptive radius the kept pixels saw exactly the context they would see in an untiled run, so
tiled output equals untiled output to float rounding. Blend merge keeps the whole window and
feathers the margins, for models whose context is global.
"""

from __future__ import annotations

import bisect
import functools
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Rect:
    """Half-open pixel rectangle [y0, y1) x [x0, x1)."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    def scaled(self, s: int) -> "Rect":
        return Rect(self.y0 * s, self.y1 * s, self.x0 * s, self.x1 * s)

    def relative_to(self, outer: "Rect") -> "Rect":
        return Rect(self.y0 - outer.y0, self.y1 - outer.y0, self.x0 - outer.x0, self.x1 - outer.x0)


@dataclass(frozen=True)
class Tile:
    core: Rect  # input pixels whose output this tile owns
    window: Rect  # input pixels fed to the model


def split_evenly(length: int, pieces: int, align: int = 1) -> list[tuple[int, int]]:
    """Splits [0, length) into `pieces` nearly equal spans whose inner borders are multiples of `align`."""
    pieces = max(1, min(pieces, math.ceil(length / align)))
    borders = [0]
    for i in range(1, pieces):
        border = round(i * length / pieces / align) * align
        borders.append(min(max(border, borders[-1] + align), length))
    borders.append(length)
    return [(a, b) for a, b in zip(borders, borders[1:]) if b > a]


def _window_span(core: tuple[int, int], pad: int, size: int, length: int, align: int) -> tuple[int, int]:
    """A window of `size` around `core` grown by `pad`, slid inside [0, length), start aligned.

    Aligning the start of a window pushed against the far edge can uncover the end of its core;
    such a window runs to the edge instead (its shape differs by less than `align`).
    """
    if size >= length:
        return 0, length
    start = max(0, min(core[0] - pad, length - size))
    start -= start % align  # keeps window-attention grids aligned with the untiled run
    if start + size < min(length, core[1] + pad):
        return start, length
    return start, start + size


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def plan_axis(length: int, tile: int, pad: int, align: int = 1) -> tuple[list[tuple[int, int]], int]:
    """Cores along one axis and the common window length.

    `tile` is the window length wanted (what the model is fed); the core is what is left after
    the margins, at least `align` and at least a quarter of the tile so tiny tiles still progress.
    """
    if tile <= 0 or tile >= length:
        return [(0, length)], length
    core_max = max(tile - 2 * pad, align, tile // 4)
    pieces = math.ceil(length / core_max)
    cores = split_evenly(length, pieces, align)
    size = _window_length(cores, pad, align)
    if size >= 0.9 * length:  # margins cover (nearly) everything: one window costs less, barely more memory
        return [(0, length)], length
    return cores, size


def _window_length(cores: list[tuple[int, int]], pad: int, align: int) -> int:
    """Longest core plus both margins, plus slack for aligning the window start."""
    longest = max(b - a for a, b in cores)
    return _round_up(longest + 2 * pad + (align - 1), align)


def plan_tiles(
    height: int, width: int, tile: int | tuple[int, int], pad: int, align: int = 1, square: bool = False
) -> list[Tile]:
    """Tiles covering a (height, width) image; every window has the same shape.

    `tile` <= 0 means one window for the whole image. `align` makes core borders and window
    origins multiples of it (models with a `multiple_of` size requirement or attention windows).
    """
    tile_h, tile_w = (tile, tile) if isinstance(tile, int) else tile
    cores_y, size_y = plan_axis(height, tile_h, pad, align)
    cores_x, size_x = plan_axis(width, tile_w, pad, align)
    if square and size_y != size_x:
        size_y = size_x = min(max(size_y, size_x), height, width)
    tiles = []
    for cy in cores_y:
        wy = _window_span(cy, pad, size_y, height, align)
        for cx in cores_x:
            wx = _window_span(cx, pad, size_x, width, align)
            tiles.append(Tile(core=Rect(cy[0], cy[1], cx[0], cx[1]), window=Rect(wy[0], wy[1], wx[0], wx[1])))
    return tiles


@functools.lru_cache(maxsize=4096)  # pure; auto planning weighs the same shapes for every plan of a size
def window_shape(height: int, width: int, side: int, pad: int, align: int = 1) -> tuple[int, int]:
    """The (height, width) `tile` for `plan_tiles` whose windows hold at most `side`² pixels
    (or as many as the square `side` plan's windows) and that computes the fewest pixels in all.

    Margins are what tiling costs, and a square window is not the cheapest shape for them:
    every window pays `pad` on each side that borders another window, so full-height strips
    often compute fewer pixels than a square grid of the same window area (an example in
    benchmarks/README.md, "Window shapes"). Ties go to fewer windows. Auto tiles only: a tile length
    the user asked for stays square.
    """
    if side <= 0:
        return side, side
    square_y, square_x = plan_axis(height, side, pad, align), plan_axis(width, side, pad, align)
    budget = max(side * side, square_y[1] * square_x[1])
    options_y, options_x = _axis_options(height, side, pad, align), _axis_options(width, side, pad, align)
    # along one axis, fewer pieces compute fewer pixels: for each window length, the fewest
    # pieces among the x options no longer than it
    options_x.sort(key=lambda option: option[1][1])
    sizes_x = [size for _, (_, size) in options_x]
    fewest: list[tuple[int, int, int]] = []
    for tile_x, (pieces_x, size_x) in options_x:
        fewest.append(min((pieces_x, size_x, tile_x), fewest[-1]) if fewest else (pieces_x, size_x, tile_x))
    best: tuple[tuple[int, int], tuple[int, int]] | None = None
    for tile_y, (pieces_y, size_y) in options_y:
        longest = bisect.bisect_right(sizes_x, budget // size_y)
        if longest == 0:
            continue
        pieces_x, size_x, tile_x = fewest[longest - 1]
        cost = (pieces_y * size_y * pieces_x * size_x, pieces_y * pieces_x)
        if best is None or cost < best[0]:
            best = (cost, (tile_y, tile_x))
    return best[1] if best is not None else (side, side)


def _axis_options(length: int, side: int, pad: int, align: int) -> list[tuple[int, tuple[int, int]]]:
    """Tile lengths giving each distinct (pieces, window length) of `plan_axis` along one axis.

    Piece counts stop at cores of 8 pixels (or `align`): each extra piece adds two margins, so
    thinner cores only matter for budgets far below `autotile.MIN_AUTO_TILE`², where the
    square plan is kept."""
    unit = max(align, 8)
    tiles = {length, side}
    tiles.update(-(-length // n) + 2 * pad + align - 1 for n in range(2, -(-length // unit) + 1))
    options: dict[tuple[int, int], int] = {}
    for tile in sorted(tiles, reverse=True):
        cores, size = plan_axis(length, tile, pad, align)
        options.setdefault((len(cores), size), tile)
    return [(tile, outcome) for outcome, tile in options.items()]


def split_tile(tile: Tile, height: int, width: int, new_tile: int, pad: int, align: int = 1) -> list[Tile]:
    """Re-plans one tile's core with a smaller tile size (used after an out-of-memory error).

    The cores of the pieces cover exactly the old core, so work already merged elsewhere stays valid.
    """
    core = tile.core
    cores_y, size_y = plan_axis(core.height, new_tile, pad, align)
    cores_x, size_x = plan_axis(core.width, new_tile, pad, align)
    size_y = min(height, _window_length(cores_y, pad, align))
    size_x = min(width, _window_length(cores_x, pad, align))
    pieces = []
    for ay, by in cores_y:
        cy = (core.y0 + ay, core.y0 + by)
        wy = _window_span(cy, pad, size_y, height, align)
        for ax, bx in cores_x:
            cx = (core.x0 + ax, core.x0 + bx)
            wx = _window_span(cx, pad, size_x, width, align)
            pieces.append(Tile(core=Rect(cy[0], cy[1], cx[0], cx[1]), window=Rect(wy[0], wy[1], wx[0], wx[1])))
    return pieces
