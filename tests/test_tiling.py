"""Tile plans: exact cover, one window shape, enough context, no slivers, alignment."""

from __future__ import annotations

import pytest
import torch
from tilewise.engine.plan.tiling import Tile, plan_axis, plan_tiles, split_evenly, split_tile


def _check_plan(tiles: list[Tile], height: int, width: int, pad: int, align: int = 1) -> None:
    cover = torch.zeros(height, width, dtype=torch.int32)
    for t in tiles:
        cover[t.core.y0 : t.core.y1, t.core.x0 : t.core.x1] += 1
        w = t.window
        assert 0 <= w.y0 and w.y1 <= height and 0 <= w.x0 and w.x1 <= width
        # the window holds the core plus `pad` of context wherever the image has it
        assert w.y0 <= max(0, t.core.y0 - pad) and w.y1 >= min(height, t.core.y1 + pad)
        assert w.x0 <= max(0, t.core.x0 - pad) and w.x1 >= min(width, t.core.x1 + pad)
        assert w.y0 % align == 0 and w.x0 % align == 0
    assert bool((cover == 1).all()), "every pixel belongs to exactly one core"
    heights = {t.window.height for t in tiles}
    widths = {t.window.width for t in tiles}
    if align == 1:
        assert len(heights) == len(widths) == 1, "windows share one shape, so they batch"
    else:  # a window pushed against the far edge may run to it after aligning its start
        assert max(heights) - min(heights) < align and max(widths) - min(widths) < align


@pytest.mark.parametrize(
    "height,width,tile,pad",
    [(1, 1, 64, 8), (7, 300, 64, 10), (513, 511, 128, 12), (1000, 37, 100, 30), (257, 263, 32, 0)],
)
def test_plan_covers_exactly_once_with_context(height, width, tile, pad):
    _check_plan(plan_tiles(height, width, tile, pad), height, width, pad)


@pytest.mark.parametrize("height,width,align", [(200, 176, 8), (97, 131, 4), (131, 97, 16), (300, 301, 7)])
def test_plan_with_alignment(height, width, align):
    _check_plan(plan_tiles(height, width, 64, 9, align=align), height, width, 9, align=align)


def test_no_sliver_tiles():
    # 1030 px with 512 windows and pad 10 would leave a 26 px sliver if tiled greedily
    tiles = plan_tiles(1030, 1030, 512, 10)
    heights = {t.core.height for t in tiles}
    assert max(heights) - min(heights) <= 1
    assert min(heights) > 300


def test_no_tiling_when_window_covers_the_image():
    assert len(plan_tiles(100, 90, 128, 8)) == 1
    assert len(plan_tiles(100, 90, -1, 8)) == 1
    assert len(plan_tiles(100, 90, 60, 40)) == 1  # margins would cover everything anyway


def test_split_evenly_respects_alignment():
    spans = split_evenly(100, 3, align=8)
    assert spans[0][0] == 0 and spans[-1][1] == 100
    assert all(a % 8 == 0 for a, _ in spans)


def test_split_tile_covers_the_old_core():
    height, width, pad = 300, 280, 7
    tiles = plan_tiles(height, width, 160, pad)
    for tile in tiles:
        pieces = split_tile(tile, height, width, 48, pad)
        cover = torch.zeros(height, width, dtype=torch.int32)
        for p in pieces:
            cover[p.core.y0 : p.core.y1, p.core.x0 : p.core.x1] += 1
            assert p.window.height <= 48 + 2 * pad and p.window.width <= 48 + 2 * pad
        inside = cover[tile.core.y0 : tile.core.y1, tile.core.x0 : tile.core.x1]
        assert bool((inside == 1).all()) and int(cover.sum()) == tile.core.height * tile.core.width


def _computed(tiles: list[Tile]) -> int:
    return sum(t.window.height * t.window.width for t in tiles)


@pytest.mark.parametrize(
    "height,width,side,pad,align",
    [
        (872, 900, 712, 18, 1),
        (872, 900, 200, 9, 1),
        (61, 97, 40, 5, 1),
        (97, 61, 40, 5, 1),
        (120, 88, 48, 6, 8),
        (50, 300, 32, 4, 1),
        (77, 77, 30, 0, 1),
        (200, 176, 64, 9, 16),
    ],
)
def test_window_shape_computes_the_fewest_pixels(height, width, side, pad, align):
    """Against a brute force over every (height, width) tile: no plan whose windows fit the
    budget computes fewer pixels, and the chosen one covers the image with its context.
    (A window's size is its plan's common one: the first window's; with `align` > 1 one pushed
    against the far edge may run up to `align` - 1 pixels longer, in square plans too.)"""
    from tilewise.engine.plan.tiling import window_shape

    def area(tiles: list[Tile]) -> int:
        return tiles[0].window.height * tiles[0].window.width

    square = plan_tiles(height, width, side, pad, align)
    budget = max(side * side, area(square))
    shape = window_shape(height, width, side, pad, align)
    chosen = plan_tiles(height, width, shape, pad, align)
    _check_plan(chosen, height, width, pad, align)
    assert area(chosen) <= budget
    # every tile length along each axis (plan_tiles plans the axes independently)
    outcomes_y = {
        (len(cores), size) for cores, size in (plan_axis(height, t, pad, align) for t in range(1, height + 1))
    }
    outcomes_x = {(len(cores), size) for cores, size in (plan_axis(width, t, pad, align) for t in range(1, width + 1))}
    best = min(ny * sy * nx * sx for ny, sy in outcomes_y for nx, sx in outcomes_x if sy * sx <= budget)
    if align == 1:  # (with alignment a window at the far edge may run longer, see above)
        assert _computed(chosen) == best
    assert _computed(chosen) <= _computed(square)


def test_window_shape_prefers_strips_to_squares():
    from tilewise.engine.plan.tiling import window_shape

    shape = window_shape(872, 900, 712, 18)
    tiles = plan_tiles(872, 900, shape, 18)
    assert len(tiles) == 2 and _computed(tiles) < 0.93 * _computed(plan_tiles(872, 900, 712, 18))
