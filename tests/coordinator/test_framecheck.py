"""Frame rules from both sides of each threshold: moving a threshold breaks a test here."""

import numpy as np
import pytest

from sparegrid.coordinator.services import framecheck
from sparegrid.coordinator.services.framecheck import LEVEL, RULES, check

HEIGHT, WIDTH = 108, 192


def texture(seed: int = 0, noise: float = 0.02) -> np.ndarray:
    """A render-like frame: a smooth gradient and some pixel noise, well inside [0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = 0.3 + 0.3 * (x / WIDTH)[..., None] + 0.1 * (y / HEIGHT)[..., None]
    return np.clip(base + rng.normal(0, noise, (HEIGHT, WIDTH, 3)), 0.05, 0.95)


def trimmed() -> int:
    return max(2, int(framecheck.TRIM * HEIGHT * WIDTH))


@pytest.mark.parametrize("name", list(RULES))
def test_psnr_threshold_from_both_sides(name: str) -> None:
    rule = RULES[name]
    a = texture()
    for delta, agree in ((0.5, True), (-0.5, False)):
        offset = 10 ** (-(rule.min_psnr + delta) / 20)  # the same error in every value
        found = check(a, a + offset, rule)
        assert abs(found.metrics["psnr"] - (rule.min_psnr + delta)) < 0.05
        assert found.agree is agree, found.detail
        assert agree or found.metrics["failed"] == "psnr"


@pytest.mark.parametrize("name", list(RULES))
def test_worst_block_threshold_from_both_sides(name: str) -> None:
    rule = RULES[name]
    a = texture()
    kept = (framecheck.BLOCK**2 - trimmed()) / framecheck.BLOCK**2  # the worst pixels aside
    for delta, agree in ((0.5, True), (-0.5, False)):
        b = a.copy()
        target = rule.min_block_psnr + delta
        b[32:48, 64:80] += 10 ** (-target / 20) / np.sqrt(kept)  # one block off
        found = check(a, b, rule)
        assert abs(found.metrics["block_psnr"] - target) < 0.05
        assert found.metrics["block"] == [64, 32]
        assert found.agree is agree, found.detail
        assert agree or found.metrics["failed"] == "block_psnr"


@pytest.mark.parametrize("name", list(RULES))
def test_share_of_values_off_from_both_sides(name: str) -> None:
    rule = RULES[name]
    a = texture()
    limit = rule.max_off * HEIGHT * WIDTH * 3  # values
    for factor, agree in ((0.9, True), (1.1, False)):
        b = a.copy()
        count = trimmed() + int(limit * factor)  # the worst few pixels are set aside
        pixels = np.random.default_rng(1).choice(HEIGHT * WIDTH, count, replace=False)
        b.reshape(-1, 3)[pixels, 0] += (framecheck.OFF + 1) * LEVEL
        found = check(a, b, rule)
        assert found.agree is agree, found.detail
        assert agree or found.metrics["failed"] == "off"


def test_noise_correlation_threshold_from_both_sides() -> None:
    """A frame whose pixel noise is not the honest frame's, by a little: caught by noise
    correlation alone (PSNR and blocks are fine), as another seed's would be."""
    rule = RULES[framecheck.FRAME]
    assert rule.min_noise_correlation is not None
    allowed = 1 - rule.min_noise_correlation
    a = texture(noise=0.008)
    rng = np.random.default_rng(2)
    noise = rng.normal(0, 1, a.shape)
    for wanted, agree in ((0.5 * allowed, True), (2 * allowed, False)):
        sigma = 0.008 * np.sqrt(2 * wanted)  # 1 - correlation ~ sigma^2 / (2 noise^2)
        found = check(a, a + sigma * noise, rule)
        got = 1 - found.metrics["noise_correlation"]
        assert 0.7 * wanted < got < 1.3 * wanted
        assert found.metrics["psnr"] > rule.min_psnr
        assert found.agree is agree, found.detail
        assert agree or found.metrics["failed"] == "noise"


def test_dither_allowance_forgives_one_level_per_unit() -> None:
    rule = RULES[framecheck.CROP]
    a = texture()
    dithered = a + LEVEL * np.random.default_rng(3).choice([-1, 0, 1], a.shape)
    assert check(a, dithered, rule, allowance=1).agree
    assert not check(a, dithered, rule, allowance=0).agree
    assert not check(a, a + 2 * LEVEL * np.sign(dithered - a), rule, allowance=1).agree


def test_a_few_pixels_far_off_are_float_accidents_many_are_not() -> None:
    """Another GPU may send a ray elsewhere now and then: a couple of pixels far off must
    not reject a frame; a cheap render differs in far more than TRIM of them."""
    rule = RULES[framecheck.FRAME]
    a = texture()
    b = a.copy()
    b[10, 10], b[90, 150] = 1.0, 0.0
    assert check(a, b, rule).agree
    c = a.copy()
    pixels = np.random.default_rng(4).choice(HEIGHT * WIDTH, 5 * trimmed(), replace=False)
    c.reshape(-1, 3)[pixels] = 1.0
    assert not check(a, c, rule).agree


def test_shapes_must_match() -> None:
    a = texture()
    found = check(a, a[:-1], RULES[framecheck.FRAME])
    assert not found.agree and found.metrics == {"rule": "shape"}
