"""fer-serve's page in a real browser (headless Chromium driven by Selenium): an uploaded London photo shows
fer-predict's label and a bar per class; Chromium's fake camera (a y4m made from test images) updates it live."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_lightning.deploy.prediction import predict

from .conftest import LONDON_FIXTURES
from .serving import serving

pytestmark = pytest.mark.slow
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("Chromium or its driver is not installed (.ci/run installs them: apt-get install chromium "
                "chromium-driver)", allow_module_level=True)

from selenium import webdriver  # noqa: E402  (after the skip: the module needs Chromium anyway)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def fake_camera(path: Path, photos: list[Path], size: tuple[int, int] = (320, 240), fps: int = 5) -> Path:
    """A y4m video (4:2:0, grey) of the photos, one second each, for ``--use-file-for-fake-video-capture``."""
    w, h = size
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        chroma = np.full((h // 2) * (w // 2), 128, np.uint8).tobytes()
        for photo in photos:
            luma = Image.open(photo).convert("L").resize((w, h), Image.Resampling.BILINEAR).tobytes()
            for _ in range(fps):
                f.write(b"FRAME\n" + luma + chroma + chroma)
    return path


@pytest.fixture(scope="module")
def page(tiny_checkpoints, tmp_path_factory):
    """The page of the tiny deep checkpoint's server, in headless Chromium with a fake camera."""
    ckpt = tiny_checkpoints["deep"]
    tmp = tmp_path_factory.mktemp("page")
    photos = [LONDON_FIXTURES / c / f"00{i}.jpg" for i in (1, 2, 3) for c in ("happiness", "neutral")]
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,800",
                "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-video-capture={fake_camera(tmp / 'camera.y4m', photos)}"):
        options.add_argument(arg)
    with serving(ckpt, "max_batch_size=4", log=tmp / "serve.log") as url:
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            driver.get(url + "/")
            yield ckpt, driver
        finally:
            driver.quit()


def updates(driver) -> int:
    return int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-updates") or 0)


def test_an_uploaded_photo_shows_fer_predicts_label(page, tmp_path):
    ckpt, driver = page
    photo = LONDON_FIXTURES / "happiness" / "002.jpg"
    (row,), _ = predict(str(ckpt), [photo])
    WebDriverWait(driver, 60).until(lambda d: "model" in d.find_element(By.ID, "model").text)  # /info read
    before = updates(driver)
    driver.find_element(By.ID, "file").send_keys(str(photo))
    WebDriverWait(driver, 120).until(lambda d: updates(d) > before)
    assert driver.find_element(By.ID, "label").text == row["predicted"]
    bars = driver.find_elements(By.CSS_SELECTOR, "#bars .bar")
    assert [b.get_attribute("data-cls") for b in bars] == [k[2:] for k in row if k.startswith("p_")]
    shown = {b.get_attribute("data-cls"): float(b.find_element(By.CLASS_NAME, "num").text) for b in bars}
    assert all(abs(shown[c] - float(row[f"p_{c}"])) <= 5e-4 for c in shown)  # three decimals shown
    assert driver.find_element(By.ID, "error").text == ""
    assert driver.save_screenshot(str(tmp_path / "page-upload.png"))
    assert Image.open(tmp_path / "page-upload.png").size[0] > 0


def test_the_fake_camera_updates_the_page_live(page, tmp_path):
    _, driver = page
    before = updates(driver)
    driver.find_element(By.ID, "camera").click()
    WebDriverWait(driver, 180, poll_frequency=0.2).until(lambda d: updates(d) >= before + 5)
    assert driver.find_element(By.ID, "error").text == ""
    # the camera keeps redrawing the bars: read the label and the bars in one script, from one rendering
    label, classes = driver.execute_script(
        "return [document.getElementById('label').textContent.trim(),"
        " Array.from(document.querySelectorAll('#bars .bar'), b => b.getAttribute('data-cls'))];")
    assert label in classes and len(classes) == 7
    assert driver.find_element(By.ID, "camera").text == "Stop the camera"
    assert driver.save_screenshot(str(tmp_path / "page-camera.png"))
    driver.find_element(By.ID, "camera").click()
    assert driver.find_element(By.ID, "camera").text == "Use the camera"
