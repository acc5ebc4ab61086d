"""Street-scene layouts for the synthetic domain-shift benchmark: labels, instances, parts.

A scene is a pinhole view along a straight street. The ground is a plane, the
camera looks along the street, so every road edge, kerb, facade bottom and roof
line runs to one vanishing point on the horizon. Lengths are in units of the
image width at the bottom row (depth 1): a pixel at image row ``y`` below the
horizon lies on the ground at depth ``u = (H - horizon) / (y - horizon)``, and a
thing of height ``h`` at depth ``u`` is ``h * W / u`` pixels tall. With the
default horizon the camera stands ~0.3 units high and a unit is ~8 m, so a car
is 0.19 units tall and a person 0.21.

Everything is computed with +, -, *, / on whole-image numpy grids (no per-pixel
Python loops, no transcendental functions), so the same random draws give the
same labels on any IEEE-754 machine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

# The Cityscapes trainIds the benchmark draws; the other seven (wall, rider,
# truck, bus, train, motorcycle, bicycle) never occur and score as absent.
CLASS_IDS: dict[str, int] = {
    "road": 0, "sidewalk": 1, "building": 2, "fence": 4, "pole": 5,
    "traffic_light": 6, "traffic_sign": 7, "vegetation": 8, "terrain": 9,
    "sky": 10, "person": 11, "car": 13,
}
IGNORE_LABEL = 255


class Part:
    """Sub-object regions the renderer paints differently; they keep their object's label."""
    NONE, WINDOW, MARKING, WHEEL, GLASS, TAIL_LIGHT, LAMP, SIGN_FACE, SKIN, LEGS, TRUNK, BAR, TRACK = range(13)


@dataclass(frozen=True)
class SceneLayout:
    """Class frequencies and geometry of one domain's streets (the layout half of a shift).

    Densities are mean counts per image (counts are drawn uniformly in
    [0, 2 * density]); probabilities are per side of the street.
    """
    horizon: float = 0.42            # horizon row as a fraction of image height
    road_width: float = 1.0          # road width at the bottom row, in image widths
    sidewalk_width: float = 0.30     # each sidewalk's width, same units
    building_height: float = 1.6     # mean facade height (units above)
    vegetation_amount: float = 0.35  # share of roadside segments that are tree rows; also scales street trees
    terrain_prob: float = 0.3        # chance of a grass verge between sidewalk and facades
    fence_prob: float = 0.25         # chance of a fence along the sidewalk's outer edge
    car_density: float = 3.0
    person_density: float = 2.0
    pole_density: float = 2.5
    sign_prob: float = 0.5           # chance a pole carries a traffic sign
    light_prob: float = 0.25         # chance a pole carries a traffic light
    wheel_track_width: float = 0.0   # width of the two wheel tracks in every lane (0: none), units above


class Scene(NamedTuple):
    label: np.ndarray      # (H, W) uint8 trainIds
    instance: np.ndarray   # (H, W) int32, 0 for stuff; one id per painted object
    part: np.ndarray       # (H, W) uint8 Part codes
    horizon_row: float
    n_instances: int


class _Canvas:
    """Pixel grids of one view plus the label/instance/part maps being painted."""

    def __init__(self, height: int, width: int, horizon_row: float, vanish_col: float) -> None:
        self.height, self.width = height, width
        self.horizon_row, self.vanish_col = horizon_row, vanish_col
        rows = np.arange(height, dtype=np.float64) + 0.5
        cols = np.arange(width, dtype=np.float64) + 0.5
        self.dy = np.broadcast_to((rows - horizon_row)[:, None], (height, width))
        self.dx = np.broadcast_to((cols - vanish_col)[None, :], (height, width))
        self.cam = (height - horizon_row) / width  # camera height in width units
        self.label = np.full((height, width), CLASS_IDS["sky"], np.uint8)
        self.instance = np.zeros((height, width), np.int32)
        self.part = np.zeros((height, width), np.uint8)
        self.n_instances = 0

    def ground(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(below-horizon mask, depth u, lateral position) of the ground plane under each pixel."""
        below = self.dy > 0
        inv_u = np.where(below, self.dy, 1.0) / (self.height - self.horizon_row)
        u = 1.0 / inv_u
        lateral = self.dx * u / self.width
        return below, u, lateral

    def side_plane(self, lateral: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(on-this-side mask, depth u, height h) on the street-parallel vertical plane at ``lateral``."""
        inv_u = self.dx / (lateral * self.width)
        side = inv_u > 0
        u = 1.0 / np.where(side, inv_u, 1.0)
        h = self.cam - self.dy * u / self.width
        return side, u, h

    def front_plane(self, u: float) -> tuple[np.ndarray, np.ndarray]:
        """(lateral, height h) on the camera-facing vertical plane at depth ``u``."""
        lateral = self.dx * u / self.width
        h = self.cam - self.dy * u / self.width
        return lateral, h

    def new_instances(self, n: int) -> np.ndarray:
        """``n`` fresh instance ids."""
        ids = np.arange(self.n_instances + 1, self.n_instances + n + 1)
        self.n_instances += n
        return ids

    def paint(self, mask: np.ndarray, cls: str, part: np.ndarray | None = None,
              instance: int | np.ndarray | None = None) -> int | np.ndarray:
        """Paint ``mask`` as class ``cls`` over what is there; returns the instance id(s) used.

        ``instance`` is one id, or an (H, W) map of ids for stuff made of several objects.
        """
        if instance is None:
            instance = int(self.new_instances(1)[0])
        self.label[mask] = CLASS_IDS[cls]
        self.instance[mask] = instance[mask] if isinstance(instance, np.ndarray) else instance
        self.part[mask] = Part.NONE if part is None else part[mask]
        return instance


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


def _box(lateral: np.ndarray, h: np.ndarray, lat0: float, lat1: float, h0: float, h1: float) -> np.ndarray:
    return (lateral >= lat0) & (lateral < lat1) & (h >= h0) & (h < h1)


def _ellipse(lateral: np.ndarray, h: np.ndarray, lat_c: float, h_c: float, r_lat: float, r_h: float) -> np.ndarray:
    a = (lateral - lat_c) / r_lat
    b = (h - h_c) / r_h
    return a * a + b * b <= 1.0


def _density_count(rng: np.random.Generator, density: float) -> int:
    # Uniform in [0, 2 * density]: mean ``density`` without Poisson's exp().
    return int(rng.integers(0, int(round(2 * density)) + 1)) if density > 0 else 0


class _Street:
    """Per-image random street geometry in ground units (left side negative)."""

    def __init__(self, rng: np.random.Generator, layout: SceneLayout) -> None:
        road = layout.road_width * rng.uniform(0.8, 1.2)
        centre = rng.uniform(-0.12, 0.12) * road
        self.road = (centre - road / 2, centre + road / 2)
        self.sidewalk = tuple(layout.sidewalk_width * rng.uniform(0.6, 1.4) for _ in range(2))
        self.terrain = tuple(rng.uniform(0.1, 0.3) if rng.random() < layout.terrain_prob else 0.0
                             for _ in range(2))
        self.fence = tuple(bool(rng.random() < layout.fence_prob) for _ in range(2))
        left_kerb, right_kerb = self.road
        self.sidewalk_outer = (left_kerb - self.sidewalk[0], right_kerb + self.sidewalk[1])
        self.facade = (self.sidewalk_outer[0] - self.terrain[0], self.sidewalk_outer[1] + self.terrain[1])


# Distance between a car's left and right wheel tracks (cars are 0.2-0.24 wide).
_WHEEL_BASE = 0.17


def _paint_ground(canvas: _Canvas, street: _Street, layout: SceneLayout, rng: np.random.Generator) -> None:
    below, u, lateral = canvas.ground()
    canvas.paint(below & (lateral >= street.facade[0]) & (lateral < street.facade[1]), "terrain")
    sidewalk = below & (lateral >= street.sidewalk_outer[0]) & (lateral < street.sidewalk_outer[1])
    canvas.paint(sidewalk, "sidewalk")
    road = below & (lateral >= street.road[0]) & (lateral < street.road[1])
    # Dashed lane lines between 2 or 3 lanes: fixed lateral offset, dashes periodic in depth.
    lanes = np.linspace(street.road[0], street.road[1], int(rng.integers(1, 3)) + 2)
    marking = np.zeros_like(road)
    for edge in lanes[1:-1]:
        marking |= (np.abs(lateral - edge) < 0.012) & (_frac(u * 0.9) < 0.5)
    # Two tracks per lane, a car's wheel base apart; drawn from geometry alone, so a layout
    # without them consumes the same random numbers and draws the same scenes.
    tracks = np.zeros_like(road)
    if width := layout.wheel_track_width:
        for centre in (lanes[:-1] + lanes[1:]) / 2:
            for wheel in (centre - _WHEEL_BASE / 2, centre + _WHEEL_BASE / 2):
                tracks |= np.abs(lateral - wheel) < width / 2
    part = np.select([marking, tracks], [Part.MARKING, Part.TRACK], Part.NONE)
    canvas.paint(road, "road", part=part.astype(np.uint8))


def _paint_roadside(canvas: _Canvas, street: _Street, layout: SceneLayout, rng: np.random.Generator) -> None:
    """Facades and tree rows along each side, then fences in front of them."""
    for side in (0, 1):
        # Segments along the street, longer with depth: (start, end, tree row?, top, floor height, bays).
        bounds, is_trees, tops, floors, bays = [0.2], [], [], [], []
        while bounds[-1] < 60.0:
            bounds.append(bounds[-1] + rng.uniform(0.8, 2.5) * (1.0 + bounds[-1] / 10.0))
            is_trees.append(rng.random() < layout.vegetation_amount)
            tops.append(layout.building_height * rng.uniform(0.5, 1.5))
            floors.append(rng.uniform(0.3, 0.45))
            bays.append(rng.uniform(2.0, 3.5))  # window columns per unit of depth
        # A tree row's top wanders between random knots, 4 per segment.
        knot_u = np.concatenate([np.linspace(a, b, 4, endpoint=False) for a, b in zip(bounds[:-1], bounds[1:])])
        knot_h = layout.building_height * 0.45 * rng.uniform(0.6, 1.4, size=knot_u.size)
        on_side, u, h = canvas.side_plane(street.facade[side])
        seg = np.clip(np.searchsorted(np.asarray(bounds), u, side="right") - 1, 0, len(tops) - 1)
        inside = on_side & (h >= 0) & (u >= bounds[0])
        trees = np.asarray(is_trees)[seg]
        top = np.where(trees, np.interp(u, knot_u, knot_h), np.asarray(tops)[seg])
        floor, bay = np.asarray(floors)[seg], np.asarray(bays)[seg]
        storey, column = _frac(h / floor), _frac(u * bay)
        window = (storey > 0.3) & (storey < 0.75) & (column > 0.3) & (column < 0.7) & (h > floor)
        standing = inside & (h < top)
        instance = canvas.new_instances(len(tops))[seg]  # each building its own colour
        canvas.paint(standing & trees, "vegetation", instance=instance)
        canvas.paint(standing & ~trees, "building", part=np.where(window, Part.WINDOW, Part.NONE).astype(np.uint8),
                     instance=instance)
    for side in (0, 1):
        if street.fence[side]:
            on_side, u, h = canvas.side_plane(street.sidewalk_outer[side])
            top = rng.uniform(0.08, 0.14)
            bars = _frac(u * rng.uniform(6.0, 12.0)) < 0.3
            canvas.paint(on_side & (h >= 0) & (h < top) & (u > 0.3), "fence",
                         part=np.where(bars, Part.BAR, Part.NONE).astype(np.uint8))


# Objects stand on the ground at (lateral, depth u); each is painted as one
# instance by a function taking (canvas, lateral, u, rng, extra).

def _car(canvas: _Canvas, lat_c: float, u: float, rng: np.random.Generator) -> None:
    width, height, length = rng.uniform(0.2, 0.24), rng.uniform(0.16, 0.2), rng.uniform(0.45, 0.6)
    cabin_h = height * 0.55
    inst = None
    # The side facing the street centre shows when the car is off-axis.
    side_lat = lat_c + width / 2 if lat_c < 0 else lat_c - width / 2
    if abs(side_lat) > 0.02 and side_lat * lat_c > 0:
        on_side, su, sh = canvas.side_plane(side_lat)
        along = (su - u) / length
        body = on_side & (along >= 0) & (along < 1) & (sh >= 0.03) & (sh < cabin_h)
        cabin = on_side & (along >= 0.15) & (along < 0.75) & (sh >= cabin_h) & (sh < height)
        wheel = on_side & (sh >= 0) & (sh < 0.06) & (((along >= 0.08) & (along < 0.25)) | ((along >= 0.75) & (along < 0.92)))
        part = np.where(cabin & (sh < height - 0.015), Part.GLASS, np.where(wheel, Part.WHEEL, Part.NONE))
        inst = canvas.paint(body | cabin | wheel, "car", part=part.astype(np.uint8))
    lateral, h = canvas.front_plane(u)
    lat0, lat1 = lat_c - width / 2, lat_c + width / 2
    body = _box(lateral, h, lat0, lat1, 0.03, cabin_h)
    cabin = _box(lateral, h, lat0 + 0.025, lat1 - 0.025, cabin_h, height)
    wheels = _box(lateral, h, lat0, lat0 + 0.04, 0.0, 0.04) | _box(lateral, h, lat1 - 0.04, lat1, 0.0, 0.04)
    lights = (_box(lateral, h, lat0, lat0 + 0.035, cabin_h - 0.04, cabin_h - 0.015)
              | _box(lateral, h, lat1 - 0.035, lat1, cabin_h - 0.04, cabin_h - 0.015))
    glass = _box(lateral, h, lat0 + 0.04, lat1 - 0.04, cabin_h + 0.01, height - 0.015)
    part = np.select([glass, lights, wheels], [Part.GLASS, Part.TAIL_LIGHT, Part.WHEEL], Part.NONE)
    canvas.paint(body | cabin | wheels, "car", part=part.astype(np.uint8), instance=inst)


def _person(canvas: _Canvas, lat_c: float, u: float, rng: np.random.Generator) -> None:
    scale = rng.uniform(0.85, 1.1)
    lateral, h = canvas.front_plane(u)
    head = _ellipse(lateral, h, lat_c, 0.19 * scale, 0.012 * scale, 0.017 * scale)
    torso = _box(lateral, h, lat_c - 0.022 * scale, lat_c + 0.022 * scale, 0.1 * scale, 0.172 * scale)
    stride = rng.uniform(0.0, 0.012)
    legs = (_box(lateral, h, lat_c - 0.018 * scale - stride, lat_c - 0.003 * scale, 0, 0.1 * scale)
            | _box(lateral, h, lat_c + 0.003 * scale, lat_c + 0.018 * scale + stride, 0, 0.1 * scale))
    part = np.select([head, legs], [Part.SKIN, Part.LEGS], Part.NONE)
    canvas.paint(head | torso | legs, "person", part=part.astype(np.uint8))


def _pole(canvas: _Canvas, lat_c: float, u: float, rng: np.random.Generator, layout: SceneLayout) -> None:
    height = rng.uniform(0.45, 0.6)
    lateral, h = canvas.front_plane(u)
    canvas.paint(_box(lateral, h, lat_c - 0.009, lat_c + 0.009, 0, height), "pole")
    # Mounted things hang towards the road.
    toward = 1.0 if lat_c < 0 else -1.0
    if rng.random() < layout.sign_prob:
        size = rng.uniform(0.07, 0.1)
        centre = lat_c + toward * size * 0.3
        if rng.random() < 0.5:
            sign = _ellipse(lateral, h, centre, height - size / 2, size / 2, size / 2)
        else:
            sign = _box(lateral, h, centre - size / 2, centre + size / 2, height - size, height)
        face = _ellipse(lateral, h, centre, height - size / 2, size * 0.35, size * 0.35)
        canvas.paint(sign, "traffic_sign", part=np.where(face, Part.SIGN_FACE, Part.NONE).astype(np.uint8))
    if rng.random() < layout.light_prob:
        top = height - 0.11
        centre = lat_c + toward * 0.035
        box = _box(lateral, h, centre - 0.02, centre + 0.02, top - 0.12, top)
        lamps = np.zeros_like(box)
        for k in range(3):
            lamps |= _ellipse(lateral, h, centre, top - 0.02 - 0.04 * k, 0.011, 0.014)
        canvas.paint(box, "traffic_light", part=np.where(lamps & box, Part.LAMP, Part.NONE).astype(np.uint8))


def _tree(canvas: _Canvas, lat_c: float, u: float, rng: np.random.Generator) -> None:
    crown_h = rng.uniform(0.35, 0.55)
    lateral, h = canvas.front_plane(u)
    trunk = _box(lateral, h, lat_c - 0.012, lat_c + 0.012, 0, crown_h)
    crown = _ellipse(lateral, h, lat_c, crown_h + 0.08, rng.uniform(0.08, 0.14), rng.uniform(0.1, 0.16))
    canvas.paint(trunk | crown, "vegetation", part=np.where(trunk & ~crown, Part.TRUNK, Part.NONE).astype(np.uint8))


def _near_biased_depth(rng: np.random.Generator, near: float, far: float) -> float:
    # Squaring a uniform draw favours near (large) objects, as a dashcam sees them.
    r = rng.random()
    return near + (far - near) * r * r


def _place_objects(canvas: _Canvas, street: _Street, layout: SceneLayout, rng: np.random.Generator) -> None:
    """Cars on the road, people and street furniture on the sidewalks, far ones painted first."""
    objects: list[tuple[float, float, str]] = []
    road0, road1 = street.road
    for _ in range(_density_count(rng, layout.car_density)):
        if rng.random() < 0.5:  # parked along a kerb
            lat = road0 + 0.14 if rng.random() < 0.5 else road1 - 0.14
        else:
            lat = rng.uniform(road0 + 0.13, road1 - 0.13)
        objects.append((_near_biased_depth(rng, 0.9, 10.0), lat, "car"))

    def on_sidewalk(side: int, inner: float, outer: float) -> float:
        kerb, walk = street.road[side], street.sidewalk[side]
        offset = walk * rng.uniform(inner, outer)
        return kerb - offset if side == 0 else kerb + offset

    for _ in range(_density_count(rng, layout.person_density)):
        if rng.random() < 0.15:  # crossing the road
            lat = rng.uniform(road0, road1)
        else:
            lat = on_sidewalk(int(rng.integers(0, 2)), 0.2, 0.9)
        objects.append((_near_biased_depth(rng, 0.9, 8.0), lat, "person"))
    for _ in range(_density_count(rng, layout.pole_density)):
        objects.append((_near_biased_depth(rng, 0.9, 9.0), on_sidewalk(int(rng.integers(0, 2)), 0.1, 0.3), "pole"))
    for _ in range(_density_count(rng, 4 * layout.vegetation_amount)):
        objects.append((rng.uniform(1.2, 10.0), on_sidewalk(int(rng.integers(0, 2)), 0.5, 0.8), "tree"))

    objects.sort(key=lambda o: -o[0])
    for u, lat, kind in objects:
        if kind == "car":
            _car(canvas, lat, u, rng)
        elif kind == "person":
            _person(canvas, lat, u, rng)
        elif kind == "pole":
            _pole(canvas, lat, u, rng, layout)
        else:
            _tree(canvas, lat, u, rng)


def compose_scene(rng: np.random.Generator, layout: SceneLayout, height: int, width: int) -> Scene:
    """One random street scene: trainId labels plus the instance/part maps the renderer needs."""
    horizon_row = height * (layout.horizon + rng.uniform(-0.04, 0.04))
    canvas = _Canvas(height, width, horizon_row, width * (0.5 + rng.uniform(-0.08, 0.08)))
    street = _Street(rng, layout)
    _paint_ground(canvas, street, layout, rng)
    _paint_roadside(canvas, street, layout, rng)
    _place_objects(canvas, street, layout, rng)
    return Scene(canvas.label, canvas.instance, canvas.part, horizon_row, canvas.n_instances)
