"""Paint a synthetic street scene in a domain's appearance (the appearance half of a shift).

Only +, -, *, / and rounding touch pixel values (value noise instead of
Perlin, a binomial kernel instead of a Gaussian, Irwin-Hall instead of
Box-Muller noise), so a seed renders bit-identical images on any IEEE-754
machine for a given numpy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fcnwild.base.errors import DatasetError
from fcnwild.data.synthetic_scene import CLASS_IDS, Part, Scene

RGB = tuple[float, float, float]

# Part colours are shared by both default domains; a style may override any.
_PART_COLOURS: dict[str, RGB] = {
    "window": (60, 70, 90), "marking": (235, 235, 225), "wheel": (25, 25, 25),
    "glass": (40, 50, 65), "tail_light": (200, 20, 20), "lamp": (240, 200, 40),
    "sign_face": (240, 240, 240), "skin": (215, 170, 140), "legs": (50, 50, 70),
    "trunk": (90, 65, 40), "bar": (60, 60, 60), "track": (62, 60, 64), "haze": (215, 225, 235),
}
_PART_NAMES = {Part.WINDOW: "window", Part.MARKING: "marking", Part.WHEEL: "wheel",
               Part.GLASS: "glass", Part.TAIL_LIGHT: "tail_light", Part.LAMP: "lamp",
               Part.SIGN_FACE: "sign_face", Part.SKIN: "skin", Part.LEGS: "legs",
               Part.TRUNK: "trunk", Part.BAR: "bar", Part.TRACK: "track"}

# How strongly each class shows the texture noise (foliage most, signs least).
_TEXTURE_GAIN = {"road": 1.0, "sidewalk": 0.8, "building": 0.7, "vegetation": 1.8,
                 "terrain": 1.3, "sky": 0.5, "fence": 0.6}
_VARIED_CLASSES = ("car", "person")  # objects painted in arbitrary colours


def sunny_palette() -> dict[str, RGB]:
    """Warm summer city: dark asphalt, beige paving, brick, saturated foliage, blue sky."""
    return {"road": (75, 72, 78), "sidewalk": (175, 150, 125), "building": (150, 105, 85),
            "fence": (130, 105, 75), "pole": (95, 95, 100), "traffic_light": (45, 45, 40),
            "traffic_sign": (200, 180, 40), "vegetation": (70, 125, 40), "terrain": (130, 165, 70),
            "sky": (100, 155, 230), "person": (150, 60, 70), "car": (30, 60, 150), **_PART_COLOURS}


@dataclass(frozen=True)
class Appearance:
    """Named appearance knobs of one domain; colours are RGB 0-255."""
    palette: dict[str, RGB] = field(default_factory=sunny_palette)  # per class and per part
    palette_jitter: float = 0.2          # per-image relative spread of each class colour
    instance_jitter: float = 0.08        # per-object relative spread on top of it
    object_colour_variety: float = 0.7   # how far car/person colours stray towards random colours
    brightness: float = 1.0
    contrast: float = 1.0
    colour_cast: RGB = (1.0, 1.0, 1.0)   # per-channel gain
    illumination_gradient: float = 0.15  # left-right sun shading amplitude
    texture_strength: float = 0.12
    texture_scale: float = 6.0           # texture feature size in pixels
    noise_sigma: float = 2.0             # sensor noise std, 0-255 units
    blur_sigma: float = 0.0              # optical blur, pixels
    season_whiten: float = 0.0           # 0..1 blend of road and sidewalk towards snow_colour
    snow_colour: RGB = (232, 236, 242)

    def __post_init__(self) -> None:
        missing = sorted((set(CLASS_IDS) | set(_PART_NAMES.values()) | {"haze"}) - set(self.palette))
        if missing:
            raise DatasetError(f"synthetic appearance palette has no colour for {', '.join(missing)}")
        if not 0.0 <= self.season_whiten <= 1.0 or min(self.noise_sigma, self.blur_sigma, self.texture_scale) < 0:
            raise DatasetError(f"synthetic appearance needs season_whiten in [0, 1] and non-negative noise_sigma, "
                               f"blur_sigma, texture_scale; got {self.season_whiten}, {self.noise_sigma}, "
                               f"{self.blur_sigma}, {self.texture_scale}")


def _value_noise(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """Smooth noise in [-1, 1]: random knots every ``scale`` px, bilinearly interpolated."""
    step = max(scale, 1.0)
    gh, gw = int(height / step) + 2, int(width / step) + 2
    knots = rng.random((gh, gw)) * 2.0 - 1.0
    ry = (np.arange(height) + 0.5) / step
    rx = (np.arange(width) + 0.5) / step
    y0, x0 = np.floor(ry).astype(np.intp), np.floor(rx).astype(np.intp)
    fy, fx = (ry - y0)[:, None], (rx - x0)[None, :]
    top = knots[y0][:, x0] * (1 - fx) + knots[y0][:, x0 + 1] * fx
    bottom = knots[y0 + 1][:, x0] * (1 - fx) + knots[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _binomial_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable blur by the even-order binomial kernel whose std is nearest ``sigma``."""
    order = 2 * int(round(2 * sigma * sigma))  # binomial(n) has variance n / 4
    if order == 0:
        return image
    taps = np.array([math.comb(order, k) for k in range(order + 1)], np.float64) / 2.0 ** order
    r = order // 2
    for axis in (0, 1):
        padded = np.pad(image, [(r, r) if a == axis else (0, 0) for a in range(image.ndim)], mode="reflect")
        n = image.shape[axis]
        out = np.zeros_like(image)
        for k, t in enumerate(taps):
            out += t * np.take(padded, np.arange(k, k + n), axis=axis)
        image = out
    return image


def _gaussian_like(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    # Irwin-Hall: the sum of 4 uniforms has variance 1/3; scaled to unit variance.
    return (rng.random((4,) + shape).sum(axis=0) - 2.0) * math.sqrt(3.0)


def render_scene(rng: np.random.Generator, scene: Scene, look: Appearance) -> np.ndarray:
    """The (H, W, 3) uint8 RGB image of ``scene`` in appearance ``look``."""
    label, height, width = scene.label, scene.label.shape[0], scene.label.shape[1]
    # Per-image colour of every trainId, then per-object variation on top.
    class_colour = np.zeros((256, 3))
    for name, cls in CLASS_IDS.items():
        class_colour[cls] = np.asarray(look.palette[name], np.float64) * (
            1.0 + look.palette_jitter * _gaussian_like(rng, (3,)))
    inst_gain = 1.0 + look.instance_jitter * _gaussian_like(rng, (scene.n_instances + 1, 3))
    inst_gain[0] = 1.0
    colour = class_colour[label] * inst_gain[scene.instance]
    random_colours = rng.random((scene.n_instances + 1, 3)) * 255.0
    for name in _VARIED_CLASSES:
        sel = label == CLASS_IDS[name]
        v = look.object_colour_variety
        colour[sel] = (1 - v) * colour[sel] + v * random_colours[scene.instance[sel]]
    for code, name in _PART_NAMES.items():
        sel = scene.part == code
        colour[sel] = np.asarray(look.palette[name], np.float64) * inst_gain[scene.instance[sel]]

    # Texture before snow so that snow keeps some, but the same, texture on road and sidewalk.
    gain = np.zeros(256)
    for name, g in _TEXTURE_GAIN.items():
        gain[CLASS_IDS[name]] = g
    texture = (_value_noise(rng, height, width, look.texture_scale)
               + 0.5 * _value_noise(rng, height, width, look.texture_scale / 2)) / 1.5
    colour *= (1.0 + look.texture_strength * gain[label] * texture)[..., None]
    # Traffic keeps the wheel tracks clear: they show the bare road.
    snowy = ((label == CLASS_IDS["road"]) | (label == CLASS_IDS["sidewalk"])) & (scene.part != Part.TRACK)
    w = look.season_whiten
    colour[snowy] = (1 - w) * colour[snowy] + w * np.asarray(look.snow_colour, np.float64) * (
        1.0 + 0.04 * texture[snowy])[:, None]

    # Sky brightens towards a hazy horizon.
    rows = (np.arange(height) + 0.5) / max(scene.horizon_row, 1.0)
    t = np.clip(rows, 0.0, 1.0)[:, None] ** 2 * np.ones((1, width))
    sky = label == CLASS_IDS["sky"]
    colour[sky] = (1 - 0.6 * t[sky])[:, None] * colour[sky] + (0.6 * t[sky])[:, None] * np.asarray(
        look.palette["haze"], np.float64)

    sun_side = 1.0 if rng.random() < 0.5 else -1.0
    across = ((np.arange(width) + 0.5) / width - 0.5) * 2.0
    light = look.brightness * rng.uniform(0.9, 1.1) * (1.0 + look.illumination_gradient * sun_side * across)
    colour *= light[None, :, None] * np.asarray(look.colour_cast, np.float64)
    colour = 128.0 + look.contrast * (colour - 128.0)
    colour = _binomial_blur(colour, look.blur_sigma)
    colour += look.noise_sigma * _gaussian_like(rng, colour.shape)
    return np.clip(np.rint(colour), 0, 255).astype(np.uint8)
