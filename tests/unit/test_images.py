import hashlib

from PIL import Image

from lookbook.io.images import inspect_image, to_rgb
from lookbook.io.synthetic import jpeg_bytes, png_bytes, png_claiming_size

RED = Image.new("RGB", (60, 80), (200, 30, 40))


def test_valid_jpeg_facts():
    data = jpeg_bytes(RED)
    facts = inspect_image(data, max_pixels=10_000)
    assert facts.error is None
    assert (facts.format, facts.mode, facts.width, facts.height) == ("JPEG", "RGB", 60, 80)
    assert facts.sha256 == hashlib.sha256(data).hexdigest()


def test_any_decodable_format_and_mode_is_valid():
    rgba = RED.convert("RGBA")
    for data, fmt, mode in [(png_bytes(RED), "PNG", "RGB"),
                            (jpeg_bytes(RED.convert("L")), "JPEG", "L"),
                            (jpeg_bytes(RED.convert("CMYK")), "JPEG", "CMYK"),
                            (png_bytes(rgba), "PNG", "RGBA")]:
        facts = inspect_image(data, max_pixels=10_000)
        assert facts.error is None and (facts.format, facts.mode) == (fmt, mode)


def test_bad_bytes_get_reasons():
    assert inspect_image(b"", 10_000).error == "empty file"
    assert inspect_image(None, 10_000).error == "empty file"
    assert "not an image" in inspect_image(b"hello", 10_000).error
    assert "does not decode" in inspect_image(jpeg_bytes(RED)[:200], 10_000).error


def test_large_image_refused_before_decoding():
    facts = inspect_image(png_claiming_size(5_000, 5_000), max_pixels=1_000_000)
    assert "too large to decode safely" in facts.error and facts.width == 5_000
    # Beyond PIL's own bomb limit the header read itself refuses.
    assert "too large" in inspect_image(png_claiming_size(100_000, 100_000), 1_000_000).error


def test_pixel_limit_is_inclusive_of_normal_images():
    assert inspect_image(jpeg_bytes(RED), max_pixels=60 * 80).error is None
    assert inspect_image(jpeg_bytes(RED), max_pixels=60 * 80 - 1).error is not None


def test_to_rgb_handles_greyscale_cmyk_and_alpha():
    grey = to_rgb(jpeg_bytes(RED.convert("L")))
    assert grey.mode == "RGB" and grey.size == (60, 80)
    assert to_rgb(jpeg_bytes(RED.convert("CMYK"))).mode == "RGB"
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(png_bytes(transparent)).getpixel((0, 0)) == (255, 255, 255)
