"""The largest input a deploy net can take under a memory budget, for tiled whole-image
prediction (``fcnwild.data.inference.TiledPredictor``).

A net's forward memory at an input size is estimated from shape inference alone (no
tensor is allocated): every blob at float32, plus the largest im2col buffer a
convolution needs, plus the weights and one transient copy of the largest of them (oneDNN
reorders a kernel's weights into its blocked layout for the call). A test-phase forward
keeps every blob, as pycaffe does, so the blobs add up.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fcnwild.base.errors import NetError
from fcnwild.data.inference import TiledPredictor, covered_cells
from fcnwild.nets.net import Net

FLOAT_BYTES = 4
DEFAULT_MEMORY_BUDGET = 4 << 30
# Tiles per side tried before giving up: a budget that needs more is too small to be meant.
_MAX_TILES_PER_SIDE = 64


def forward_bytes(net: Net, input_blob: str, height: int, width: int) -> int:
    """Bytes a batch-1 forward of ``net`` at ``height`` x ``width`` holds at its peak
    (activations, scratch and weights); leaves the net reshaped to that input."""
    channels = net.blobs[input_blob].shape[1]
    net.reshape_inputs({input_blob: (1, channels, height, width)})
    blobs = sum(blob.count for blob in net.blobs.values())
    scratch = 0
    for i, layer in enumerate(net.layers):
        if layer.type_name not in ("Convolution", "Deconvolution") or not net.bottom_names[i]:
            continue
        bottom = net.blobs[net.bottom_names[i][0]].shape
        top = net.blobs[net.top_names[i][0]].shape
        kernel = int(np.prod(layer.blobs[0].shape[2:]))
        # im2col: (input channels x kernel) x output positions; col2im for a deconvolution.
        small, large = (bottom, top) if layer.type_name == "Deconvolution" else (top, bottom)
        scratch = max(scratch, large[1] * kernel * int(np.prod(small[2:])))
    params = [int(np.prod(blob.shape)) for layer in net.layers for blob in layer.blobs]
    return (blobs + scratch + sum(params) + max(params, default=0)) * FLOAT_BYTES


class TileChoice(NamedTuple):
    input_size: tuple[int, int]     # net input (height, width)
    tiles: tuple[int, int]          # tiles down and across the image
    bytes: int                      # estimated forward memory at that input


def choose_tile(net: Net, input_blob: str, image_size: tuple[int, int], margin: int, zoom: int,
                budget: int = DEFAULT_MEMORY_BUDGET, cover: tuple[int, int] | None = None
                ) -> TileChoice:
    """The input size with the least total computation (tiles x input area) whose forward
    fits ``budget`` bytes: the whole image when it fits. Each tile's output region (input
    minus twice the ``margin``) is a multiple of the net's ``zoom`` (output stride);
    together the tiles cover ``cover`` pixels (default the image), so that the stitched
    score map holds the cells the upsampling reads."""
    height, width = cover or image_size
    cells_h, cells_w = -(-height // zoom), -(-width // zoom)
    best: TileChoice | None = None
    for tiles_h in range(1, min(cells_h, _MAX_TILES_PER_SIDE) + 1):
        in_h = -(-cells_h // tiles_h) * zoom + 2 * margin
        # Fewer tiles across first: the first that fits is the cheapest for these rows.
        for tiles_w in range(1, min(cells_w, _MAX_TILES_PER_SIDE) + 1):
            in_w = -(-cells_w // tiles_w) * zoom + 2 * margin
            needed = forward_bytes(net, input_blob, in_h, in_w)
            if needed <= budget:
                choice = TileChoice((in_h, in_w), (tiles_h, tiles_w), needed)
                if best is None or _compute(choice) < _compute(best):
                    best = choice
                break
        if best is not None and tiles_h * (2 * margin + zoom) * width > _compute(best):
            break       # more rows of tiles can only cost more
    if best is None:
        raise NetError(f"no input size fits a memory budget of {budget / 2**30:.2f} GiB "
                       f"(tried tiles down to {_MAX_TILES_PER_SIDE} x {_MAX_TILES_PER_SIDE} over "
                       f"{height}x{width}); raise the budget", file=net.source)
    forward_bytes(net, input_blob, *best.input_size)
    return best


def _compute(choice: TileChoice) -> int:
    return choice.tiles[0] * choice.tiles[1] * choice.input_size[0] * choice.input_size[1]


def budget_predictor(net: Net, mean_bgr, margin: int, image_size: tuple[int, int], *,
                     budget: int = DEFAULT_MEMORY_BUDGET, tile: int | None = None,
                     batch_size: int = 1, output_blob: str | None = None
                     ) -> tuple[TiledPredictor, TileChoice]:
    """A predictor that gives what tiles of the deploy net's own input size give, run with
    the input that fits ``budget`` (or the square ``tile`` input, in pixels, when given)
    over images of ``image_size`` (height, width)."""
    native = TiledPredictor(net, mean_bgr, margin=margin, output_blob=output_blob)
    region = native.output_size
    score_rows = net.blobs[native.output_blob].shape[2]
    zoom = region[0] // score_rows
    if zoom < 1 or score_rows * zoom != region[0]:
        raise NetError(f"output '{native.output_blob}' has {score_rows} rows for an output region "
                       f"of {region[0]}: expected the region divided by an integer zoom",
                       file=net.source)
    cover = tuple(covered_cells(size, r, zoom) * zoom for size, r in zip(image_size, region))
    if tile is None:
        choice = choose_tile(net, native.input_blob, image_size, margin, zoom, budget, cover)
    else:
        if tile <= 2 * margin or (tile - 2 * margin) % zoom:
            raise NetError(f"tile {tile}: the input minus twice the margin {margin} must be a "
                           f"positive multiple of the net's output stride {zoom}", file=net.source)
        tiles = tuple(-(-c // (tile - 2 * margin)) for c in cover)
        choice = TileChoice((tile, tile), tiles, forward_bytes(net, native.input_blob, tile, tile))
    predictor = TiledPredictor(net, mean_bgr, margin=margin, batch_size=batch_size,
                               input_blob=native.input_blob, output_blob=native.output_blob,
                               same_as=region, zoom=zoom)
    return predictor, choice
