"The dashboard in a real browser: Voila serves nbs/50a_app.page.ipynb, headless Chromium loads it, the widgets render, a new method gives a new image."
import shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.fixture
def page():
    "URL of the dashboard served by Voila on a free local port (stopped afterwards)."
    chromium, driver = shutil.which('chromium'), shutil.which('chromedriver')
    if not (chromium and driver): pytest.skip('Debian chromium and chromium-driver are not installed (make browser installs them; here it could not)')
    pytest.importorskip('selenium'); pytest.importorskip('voila')
    port = _free_port()
    proc = subprocess.Popen([sys.executable, '-m', 'voila', str(ROOT / 'nbs' / '50a_app.page.ipynb'), f'--port={port}', '--no-browser',
                             '--Voila.ip=127.0.0.1'], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f'http://127.0.0.1:{port}/'
    try:
        for _ in range(120):
            try: urllib.request.urlopen(url, timeout=2); break
            except OSError: time.sleep(0.5)
        else: pytest.fail('voila did not start within 60 s')
        yield url, chromium, driver
    finally:
        proc.terminate(); proc.wait(timeout=20)

def test_dashboard_in_chromium(page, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    url, chromium, driver = page
    o = webdriver.ChromeOptions(); o.binary_location = chromium
    for a in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
              '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage', f'--user-data-dir={tmp_path / "profile"}', '--window-size=1200,1000'):
        o.add_argument(a)
    d = webdriver.Chrome(service=Service(driver), options=o)
    try:
        d.get(url)
        wait = WebDriverWait(d, 180)
        select = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '.fa-method select'))[0]     # the widgets rendered
        result = lambda: d.find_element(By.CSS_SELECTOR, 'img.fa-result').get_attribute('src') or ''
        first = wait.until(lambda d: result())
        assert 'blur17' in d.find_element(By.CSS_SELECTOR, '.fa-message').text
        options = [e.text for e in Select(select).options]
        assert {'blur17', 'mask', 'ciagan', 'password', 'distraction', 'decoupled'} <= set(options) and 'identity' not in options, options
        Select(select).select_by_visible_text('mask')                                          # what a newcomer does
        wait.until(lambda d: result() != first)
        assert 'mask: 1 face(s) anonymized' in d.find_element(By.CSS_SELECTOR, '.fa-message').text
        assert d.find_element(By.CSS_SELECTOR, 'a.fa-download').get_attribute('href').startswith('data:image/png;base64,')
    finally:
        d.quit()
