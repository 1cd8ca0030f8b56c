"""Take the README's picture of the demo page (docs/app.png) in headless Chromium, at the pipeline's saved settings.

    python scripts/app_screenshot.py                       # -> docs/app.png
    python scripts/app_screenshot.py --num-decodes 4 --image 0 --output docs/app.png

Starts `scorevae app`'s page on 127.0.0.1 (the bundled pipeline at the decode settings saved with it), clicks a bundled
test image, sets the decodes per code, presses Reconstruct, waits for the result and saves a screenshot. Needs Debian's
chromium and chromium-driver (`apt-get install -y chromium chromium-driver`) and selenium (the test extra).
"""

import argparse
import os
import shutil
import socket
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from diffusers_scorevae import app


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "..", "docs", "app.png"))
    parser.add_argument("--image", type=int, default=0, help="Bundled test image to click.")
    parser.add_argument("--num-decodes", type=int, default=4, help="Decodes per code.")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--timeout", type=float, default=900, help="Seconds to wait for the reconstruction.")
    return parser.parse_args(input_args)


def main(args):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        raise SystemExit("needs chromium and chromedriver: apt-get install -y chromium chromium-driver")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, device="cpu")

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={args.width},1500"):
        options.add_argument(argument)
    options.binary_location = chromium
    browser = webdriver.Chrome(service=Service(driver), options=options)
    try:
        wait = WebDriverWait(browser, 60)
        browser.get(f"http://127.0.0.1:{port}/")
        thumbnails = "#reconstruct-gallery button.thumbnail-item"
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, thumbnails))
        browser.find_elements(By.CSS_SELECTOR, thumbnails)[args.image].click()
        wait.until(lambda b: f"bundled test image {args.image}" in b.find_element(By.ID, "reconstruct-note").text)
        decodes = browser.find_element(By.CSS_SELECTOR, "#reconstruct-count input[type=number]")
        decodes.send_keys(Keys.CONTROL, "a")
        decodes.send_keys(str(args.num_decodes))
        decodes.send_keys(Keys.ENTER)
        start = time.time()
        browser.find_element(By.ID, "reconstruct-run").click()
        WebDriverWait(browser, args.timeout).until(
            lambda b: "Done" in b.find_element(By.ID, "reconstruct-status").text
        )
        seconds = time.time() - start
        time.sleep(1)  # let the images render
        height = browser.execute_script("return document.body.scrollHeight")
        browser.set_window_size(args.width, height + 200)
        browser.save_screenshot(args.output)
        print(f"reconstructed in {seconds:.1f} s; wrote {os.path.abspath(args.output)}")
    finally:
        browser.quit()
        demo.close()


if __name__ == "__main__":
    main(parse_args())
