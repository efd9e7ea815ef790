"""LLaVA-NeXT's AnyRes image handling: tiles of a high-resolution canvas plus a squashed overview image.

An image is fitted (aspect kept, black letterbox) onto the best of a few canvases ("grid pinpoints", each a
multiple of the tower's input side), the canvas is cut into tower-sized tiles read row by row, and the whole
image squashed to one tile goes first. On the model side the tiles' features are stitched back into one
feature map, the letterbox rows or columns are cropped away ("spatial unpad"), and a learned newline vector
ends every row; the overview tile's features come first, unchanged.

Everything here follows transformers' `LlavaNextImageProcessor` / `LlavaNextForConditionalGeneration`
(select_best_resolution, get_patch_output_size, divide_to_patches, unpad_image, pack_image_features) so an
exported model sees the same pixels and the same token count. Sizes are given as (width, height), like
`PIL.Image.size`, unless a name says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from PIL import Image

from mllm.data.images import ImageConfig, to_tensor

# LLaVA-NeXT's canvases for a 336 tower, as multiples of the tower's side: (rows, columns) of tiles.
DEFAULT_GRID = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))
# The filter used for the tiles' canvas, the same as `to_tensor`'s square resize.
RESAMPLE = Image.BILINEAR

Pinpoints = Sequence[Sequence[int]]


def default_pinpoints(tile_size: int) -> list[list[int]]:
    """LLaVA-NeXT's [height, width] canvases scaled to a tower whose input side is `tile_size`."""
    return [[rows * tile_size, cols * tile_size] for rows, cols in DEFAULT_GRID]


def best_resolution(width: int, height: int, pinpoints: Pinpoints) -> tuple[int, int]:
    """The (height, width) canvas that keeps the most of the image's pixels once it is fitted inside, the
    least empty canvas breaking ties (the first listed on a full tie), as LLaVA-NeXT chooses."""
    best: tuple[int, int] | None = None
    best_kept, best_waste = 0, math.inf
    for canvas_height, canvas_width in pinpoints:
        # The float arithmetic mirrors the reference exactly: a rounding difference flips the choice.
        scale = min(canvas_width / width, canvas_height / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        waste = canvas_width * canvas_height - kept
        if kept > best_kept or (kept == best_kept and waste < best_waste):
            best, best_kept, best_waste = (canvas_height, canvas_width), kept, waste
    if best is None:
        raise ValueError(f"no grid pinpoint fits an image of {width}x{height}: {pinpoints}")
    return best


def fitted_size(width: int, height: int, canvas_height: int, canvas_width: int) -> tuple[int, int]:
    """(width, height) of the image resized to touch the canvas on its tighter side, aspect kept."""
    if canvas_width / width < canvas_height / height:
        return canvas_width, min(math.ceil(height * canvas_width / width), canvas_height)
    return min(math.ceil(width * canvas_height / height), canvas_width), canvas_height


def unpadded_shape(height: int, width: int, original_width: int, original_height: int) -> tuple[int, int]:
    """(rows, columns) of a `height` x `width` feature map of a letterboxed image once the letterbox is
    cropped: the slack on the padded axis is removed in equal halves (an odd remainder stays)."""
    if original_width / original_height > width / height:
        content = int(round(original_height * (width / original_width), 7))
        return height - 2 * ((height - content) // 2), width
    content = int(round(original_width * (height / original_height), 7))
    return height, width - 2 * ((width - content) // 2)


@dataclass(frozen=True)
class AnyResLayout:
    """AnyRes for one tower: its canvases, its input side and the side of one tile's feature grid."""

    grid_pinpoints: tuple[tuple[int, int], ...]  # (height, width) canvases, each a multiple of tile_size
    tile_size: int
    tokens_per_side: int

    def __post_init__(self) -> None:
        if not self.grid_pinpoints:
            raise ValueError("AnyRes needs at least one grid pinpoint")
        for pinpoint in self.grid_pinpoints:
            if len(pinpoint) != 2 or any(side <= 0 or side % self.tile_size for side in pinpoint):
                raise ValueError(f"grid pinpoint {list(pinpoint)} is not a positive [height, width] multiple "
                                 f"of the tower's input size {self.tile_size}")

    @classmethod
    def create(cls, grid_pinpoints: Pinpoints | None, tile_size: int, tokens_per_side: int) -> AnyResLayout:
        """A layout from [height, width] pinpoints, LLaVA-NeXT's for this tile size when none are given."""
        pinpoints = grid_pinpoints or default_pinpoints(tile_size)
        return cls(tuple(tuple(int(side) for side in p) for p in pinpoints), tile_size, tokens_per_side)

    def grid_shape(self, width: int, height: int) -> tuple[int, int]:
        """(rows, columns) of tiles on the canvas chosen for an image."""
        canvas_height, canvas_width = best_resolution(width, height, self.grid_pinpoints)
        return canvas_height // self.tile_size, canvas_width // self.tile_size

    def num_tiles(self, width: int, height: int) -> int:
        """Tiles fed to the tower for one image: the canvas's tiles plus the overview."""
        rows, cols = self.grid_shape(width, height)
        return rows * cols + 1

    def num_image_tokens(self, width: int, height: int) -> int:
        """LLM positions of one image: the overview's tokens, then the unpadded map with a newline per row."""
        rows, cols = self.grid_shape(width, height)
        map_rows, map_cols = unpadded_shape(rows * self.tokens_per_side, cols * self.tokens_per_side, width, height)
        return self.tokens_per_side**2 + map_rows * (map_cols + 1)

    def tiles(self, image: Image.Image, cfg: ImageConfig) -> torch.Tensor:
        """Normalised (num_tiles, 3, s, s) tensor: the squashed whole image, then the canvas's tiles row by row."""
        if cfg.size != self.tile_size:
            raise ValueError(f"image size {cfg.size} differs from the AnyRes tile size {self.tile_size}")
        image = image.convert("RGB")
        square = replace(cfg, pad_to_square=False)  # the overview is squashed, as in LLaVA-NeXT
        canvas_height, canvas_width = best_resolution(image.width, image.height, self.grid_pinpoints)
        new_width, new_height = fitted_size(image.width, image.height, canvas_height, canvas_width)
        canvas = Image.new("RGB", (canvas_width, canvas_height), (0, 0, 0))
        canvas.paste(image.resize((new_width, new_height), RESAMPLE),
                     ((canvas_width - new_width) // 2, (canvas_height - new_height) // 2))
        side = self.tile_size
        crops = [canvas.crop((x, y, x + side, y + side))
                 for y in range(0, canvas_height, side) for x in range(0, canvas_width, side)]
        return torch.stack([to_tensor(tile, square) for tile in [image, *crops]])

    def pack(self, features: torch.Tensor, width: int, height: int, newline: torch.Tensor) -> torch.Tensor:
        """One image's (num_image_tokens, D) sequence from its tiles' (num_tiles, tokens_per_side**2, D) features."""
        rows, cols = self.grid_shape(width, height)
        side = self.tokens_per_side
        if features.shape[:2] != (rows * cols + 1, side * side):
            raise ValueError(f"features {tuple(features.shape)} do not fit a {rows}x{cols} grid of "
                             f"{side}x{side}-token tiles plus the overview")
        overview, dim = features[0], features.shape[-1]
        # (rows, cols, side, side, D) -> (rows * side, cols * side, D): one map in reading order.
        grid = features[1:].view(rows, cols, side, side, dim).permute(0, 2, 1, 3, 4)
        grid = grid.reshape(rows * side, cols * side, dim)
        map_rows, map_cols = unpadded_shape(rows * side, cols * side, width, height)
        top, left = (rows * side - map_rows) // 2, (cols * side - map_cols) // 2
        grid = grid[top : top + map_rows, left : left + map_cols]
        ends = newline.to(grid.dtype).expand(map_rows, 1, dim)
        return torch.cat([overview, torch.cat([grid, ends], dim=1).reshape(-1, dim)])
