"""report.html renders in a real browser: headless Chromium screenshots the page `mcompress quantize`
writes; the picture is not blank, its chart bars are drawn, and the browser logged no load and no
Content-Security-Policy violation (the page declares default-src 'none', so any attempt to load
something would be logged). Skipped when chromium is not installed (scripts/install_deps.sh adds it).
The PNG is decoded here with zlib and numpy only."""
import html as htmllib
import json
import os
import re
import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest

# Lines of chromium's log (--enable-logging=stderr) that mean the page tried to load something or
# wrote to the console; our page runs no scripts, so any console line is a CSP report or an error.
# ("Failed to load" only about a resource or a URL: chromium also logs failing to load its own GPU
# libraries on machines without one.)
BAD_LOG = re.compile(r"Failed to load (resource|.*(file|https?):)|net::ERR|Refused to|"
                     r"violates the following Content Security Policy|:CONSOLE")
SVG_NS = 'xmlns="http://www.w3.org/2000/svg"'


@pytest.fixture
def browser():
    """The chromium binary; skips (before any model is trained) when there is none."""
    return chromium()


def chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium is not installed (apt-get install chromium; scripts/install_deps.sh lists it)")


def screenshot(html, png, profile, size="1200,2000"):
    """Runs headless chromium on file://HTML; returns its stderr. Falls back to --headless=new."""
    stderr = ""
    for headless in ("--headless", "--headless=new"):
        if os.path.exists(png):
            os.remove(png)
        p = subprocess.run([chromium(), headless, "--no-sandbox", "--disable-gpu", "--no-first-run",
                            "--disable-background-networking", "--enable-logging=stderr", "--v=0",
                            f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={size}",
                            "file://" + os.path.abspath(html)],
                           capture_output=True, text=True, timeout=180)
        stderr += p.stderr
        if p.returncode == 0 and os.path.exists(png) and os.path.getsize(png) > 0:
            return stderr
    raise AssertionError(f"chromium wrote no screenshot:\n{stderr[-3000:]}")


def unfilter(filters, rows, width, channels):
    """Undoes the PNG scanline filters (None, Sub, Up, Average, Paeth). Byte (r, x) depends on
    (r, x-1), (r-1, x) and (r-1, x-1) only, so each anti-diagonal of pixels is done at once."""
    height = rows.shape[0]
    filtered = rows.reshape(height, width, channels).astype(np.int32)
    out = np.zeros((height + 1, width + 1, channels), np.int32)  # a zero row and column before the image
    kind = filters.astype(np.int32)
    for t in range(height + width - 1):
        r = np.arange(max(0, t - width + 1), min(height - 1, t) + 1)
        x = t - r
        a, b, c = out[r + 1, x], out[r, x + 1], out[r, x]  # left, up, up-left
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        f = kind[r][:, None]
        pred = np.select([f == 1, f == 2, f == 3, f == 4], [a, b, (a + b) >> 1, paeth], 0)
        out[r + 1, x + 1] = (filtered[r, x] + pred) & 255
    return out[1:, 1:].astype(np.uint8)


def read_png(path):
    """8-bit, non-interlaced PNG -> uint8 array (height, width, channels); palette images as RGB."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat, ihdr, palette = 8, [], None, None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    width, height, depth, ctype, _, _, interlace = ihdr
    assert depth == 8 and interlace == 0, f"unsupported PNG: bit depth {depth}, interlace {interlace}"
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, width * channels + 1)
    img = unfilter(raw[:, 0], raw[:, 1:], width, channels)
    if ctype == 3:
        img = palette[img[:, :, 0]]
    elif ctype in (0, 4):
        img = np.repeat(img[:, :, :1], 3, axis=2)
    return img[:, :, :3]


def near(rgb, color, tol=24):
    """Pixels within tol (per channel) of an RGB color."""
    return int((np.abs(rgb.astype(np.int32) - np.array(color)).max(axis=2) <= tol).sum())


def test_report_html_renders_in_chromium(browser, mc, tiny_lm, tmp_path):
    d, model = tiny_lm
    out = tmp_path / "w4"
    mc("quantize", model, "--bits", "4", "--group-size", "32", "--eval", d / "corpus" / "valid.txt", "-o", out, "-q")
    html_path = out / "report.html"
    assert html_path.exists()
    html = html_path.read_text(encoding="utf-8")
    rep = json.loads((out / "report.json").read_text())
    assert rep["layers"] and rep["metrics"]
    text = htmllib.unescape(html)
    for layer in rep["layers"]:
        assert layer["name"] in text
    for m in rep["metrics"]:
        assert m["name"] in text
    assert rep["created"] in html  # the three files share one "created" time
    assert re.findall(r"https?://", html.replace(SVG_NS, "")) == []
    assert "<script" not in html.lower()

    png = tmp_path / "shot.png"
    stderr = screenshot(html_path, png, tmp_path / "profile")
    bad = [line for line in stderr.splitlines() if BAD_LOG.search(line)]
    assert bad == [], "\n".join(bad)

    rgb = read_png(png)
    assert rgb.shape[:2] == (2000, 1200), rgb.shape
    key = (rgb[:, :, 0].astype(np.uint32) << 16) | (rgb[:, :, 1].astype(np.uint32) << 8) | rgb[:, :, 2]
    distinct = len(np.unique(key))
    non_white = float((rgb.min(axis=2) < 250).mean())
    # the chart's bars: error (orange, the worst in dark red) and bits per weight (blue)
    orange, blue = near(rgb, (0xEE, 0x8A, 0x4F)) + near(rgb, (0xC2, 0x3B, 0x22)), near(rgb, (0x4C, 0x78, 0xA8))
    print(f"{browser}: {distinct} distinct colors, {100 * non_white:.1f}% non-white, "
          f"{orange} error-bar pixels, {blue} bits-bar pixels")
    assert distinct >= 3
    assert non_white > 0.01
    assert orange > 200 and blue > 200


def test_browser_log_check_catches_loads(browser, tmp_path):
    """The log check above is not vacuous: a page that tries to load a stylesheet and an image under
    the same Content-Security-Policy as report.html is reported."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
                    "content=\"default-src 'none'; style-src 'unsafe-inline'\">"
                    '<link rel="stylesheet" href="missing.css"></head>'
                    '<body><p>x</p><img src="missing.png"></body></html>')
    stderr = screenshot(page, tmp_path / "bad.png", tmp_path / "profile", size="400,300")
    assert any(BAD_LOG.search(line) for line in stderr.splitlines()), stderr[-3000:]
