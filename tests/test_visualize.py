"""Rank-list pictures: layout, frame colours, protocol filtering and order, checked pixel by pixel."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from ecnreid.data.records import ImageRecord
from ecnreid.evaluation import visualize as vis

# One solid colour per image, so a tile's centre pixel tells which image was drawn there.
COLORS = [(250, 200, 0), (0, 90, 255), (120, 0, 160), (0, 220, 220), (255, 120, 200), (90, 60, 20), (160, 160, 0)]
QUERY_COLORS = [(10, 110, 60), (200, 100, 40), (60, 60, 140)]


def _image(path: Path, color: tuple[int, int, int]) -> str:
    Image.new("RGB", (16, 32), color).save(path)  # 32 high, 16 wide, like a tiny person crop
    return str(path)


@pytest.fixture
def scene(tmp_path: Path):
    # gallery: (pid, camid, distance from query 0)
    layout = [
        (1, 0, 0.00),  # same pid and camera as query 0: must never be shown, although it is nearest
        (1, 1, 0.30),  # true match
        (2, 0, 0.10),
        (3, 1, 0.50),
        (1, 2, 0.70),  # true match
        (-1, 1, 0.05),  # junk: never shown
        (0, 0, 0.20),  # distractor
    ]
    gallery = [
        ImageRecord(_image(tmp_path / f"g{i}.png", COLORS[i]), pid, cam) for i, (pid, cam, _) in enumerate(layout)
    ]
    query = [
        ImageRecord(_image(tmp_path / "q0.png", QUERY_COLORS[0]), 1, 0),
        ImageRecord(_image(tmp_path / "q1.png", QUERY_COLORS[1]), 4, 1),  # no pid 4 in the gallery: invalid
        ImageRecord(_image(tmp_path / "q2.png", QUERY_COLORS[2]), 2, 1),  # g2 is a match from another camera
    ]
    distmat = torch.tensor(
        [
            [d for _, _, d in layout],
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],
        ]
    )
    return query, gallery, distmat


def _frame_pixel(image: Image.Image, slot: int) -> tuple[int, int, int]:
    x, y = vis.slot_origin(slot)
    return image.getpixel((x + 1, y + 1))


def _centre_pixel(image: Image.Image, slot: int) -> tuple[int, int, int]:
    x, y = vis.slot_origin(slot)
    return image.getpixel((x + vis.SLOT_W // 2, y + vis.SLOT_H // 2))


def test_layout_constants_give_the_picture_size():
    top_k = 10
    width = 2 * vis.MARGIN + 11 * (vis.TILE_W + 2 * vis.FRAME) + vis.QUERY_GAP + 9 * vis.GAP
    height = 2 * vis.MARGIN + vis.CAPTION_H + vis.TILE_H + 2 * vis.FRAME + vis.LABEL_H
    assert vis.rank_list_size(top_k) == (width, height)
    assert vis.slot_origin(0) == (vis.MARGIN, vis.MARGIN + vis.CAPTION_H)
    assert vis.slot_origin(1)[0] == vis.MARGIN + vis.SLOT_W + vis.QUERY_GAP
    assert vis.slot_origin(3)[0] == vis.MARGIN + vis.SLOT_W + vis.QUERY_GAP + 2 * (vis.SLOT_W + vis.GAP)
    # the last slot ends exactly one margin before the right edge
    assert vis.slot_origin(top_k)[0] + vis.SLOT_W + vis.MARGIN == width


def test_rank_list_order_colours_and_filtering(scene, tmp_path: Path):
    query, gallery, distmat = scene
    paths = vis.save_rank_lists(distmat, query, gallery, tmp_path / "ranks", num_queries=2, top_k=4, seed=0)
    assert paths == [tmp_path / "ranks" / "rank_00000.png", tmp_path / "ranks" / "rank_00002.png"]
    image = Image.open(paths[0]).convert("RGB")
    assert image.size == vis.rank_list_size(4)

    assert _frame_pixel(image, 0) == vis.QUERY_COLOR
    assert _centre_pixel(image, 0) == QUERY_COLORS[0]
    # By distance after removing g0 (same pid+camera) and g5 (pid -1): g2 0.10, g6 0.20, g1 0.30, g3 0.50.
    expected = [(2, vis.WRONG_COLOR), (6, vis.WRONG_COLOR), (1, vis.MATCH_COLOR), (3, vis.WRONG_COLOR)]
    for slot, (g, frame) in enumerate(expected, start=1):
        assert _centre_pixel(image, slot) == COLORS[g], f"rank {slot}"
        assert _frame_pixel(image, slot) == frame, f"rank {slot}"


def test_removed_gallery_images_never_appear_and_short_lists_leave_blank_slots(scene, tmp_path: Path):
    query, gallery, distmat = scene
    paths = vis.save_rank_lists(distmat, query, gallery, tmp_path, num_queries=5, top_k=7)
    image = Image.open(paths[0]).convert("RGB")
    centres = [_centre_pixel(image, slot) for slot in range(1, 8)]
    assert centres[:5] == [COLORS[2], COLORS[6], COLORS[1], COLORS[3], COLORS[4]]
    assert COLORS[0] not in centres and COLORS[5] not in centres
    assert centres[5:] == [vis.BACKGROUND, vis.BACKGROUND]  # only 5 gallery images survive the filter
    assert _frame_pixel(image, 5) == vis.MATCH_COLOR  # g4, the second true match


def test_only_valid_queries_are_drawn(scene, tmp_path: Path):
    query, gallery, distmat = scene
    assert vis.valid_query_mask(query, gallery).tolist() == [True, False, True]
    paths = vis.save_rank_lists(distmat, query, gallery, tmp_path, num_queries=10, top_k=3)
    assert [p.name for p in paths] == ["rank_00000.png", "rank_00002.png"]
    image = Image.open(paths[1]).convert("RGB")
    # query 2 (pid 2, camera 1): every gallery image is kept; nearest g6 0.3, g5 is junk, then g4 0.5, g3 0.6
    assert [_centre_pixel(image, s) for s in (1, 2, 3)] == [COLORS[6], COLORS[4], COLORS[3]]
    assert [_frame_pixel(image, s) for s in (1, 2, 3)] == [vis.WRONG_COLOR] * 3


def test_unreadable_image_becomes_a_placeholder(scene, tmp_path: Path):
    query, gallery, distmat = scene
    gallery = list(gallery)
    gallery[2] = ImageRecord(str(tmp_path / "missing.jpg"), 2, 0)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    gallery[6] = ImageRecord(str(broken), 0, 0)
    paths = vis.save_rank_lists(distmat, query, gallery, tmp_path / "out", num_queries=2, top_k=2)
    image = Image.open(paths[0]).convert("RGB")
    for slot in (1, 2):
        x, y = vis.slot_origin(slot)
        # the tile's top centre lies off both diagonals of the X
        assert image.getpixel((x + vis.SLOT_W // 2, y + vis.FRAME + 12)) == vis.PLACEHOLDER_COLOR
        assert _frame_pixel(image, slot) == vis.WRONG_COLOR


def test_pick_queries_spreads_evenly_and_is_deterministic():
    valid = torch.tensor([True, False] * 10)  # valid queries at 0, 2, ..., 18
    for seed in range(5):
        picked = vis.pick_queries(valid, 5, seed)
        assert picked == vis.pick_queries(valid, 5, seed)
        # one pick in each stretch of two valid queries: {0, 2}, {4, 6}, ...
        assert [p // 4 for p in picked] == [0, 1, 2, 3, 4]
        assert all(p % 2 == 0 for p in picked)
    assert vis.pick_queries(valid, 50) == list(range(0, 20, 2))
    assert vis.pick_queries(valid, 0) == []


def test_bad_arguments(scene, tmp_path: Path):
    query, gallery, distmat = scene
    with pytest.raises(ValueError, match="shape"):
        vis.save_rank_lists(distmat[:, :3], query, gallery, tmp_path, num_queries=1)
    with pytest.raises(ValueError, match="top_k"):
        vis.save_rank_lists(distmat, query, gallery, tmp_path, num_queries=1, top_k=0)
