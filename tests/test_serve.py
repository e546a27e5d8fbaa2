"""``metakit serve``: the JSON API agrees with the Python API, bad uploads get one-line 4xx answers,
the CLI starts and stops cleanly, and the page works in a real headless Chromium."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

pytest.importorskip("fastapi", reason="metakit serve needs the serve extra: pip install 'metakit[serve]'")
pytest.importorskip("httpx2", reason="Starlette's TestClient needs httpx2 (in the dev extra)")

from starlette.testclient import TestClient  # noqa: E402

import metakit.text.embeddings as te  # noqa: E402
from metakit.cli import main  # noqa: E402
from metakit.datasets import load_splits  # noqa: E402
from metakit.datasets.folder import image_from_tensor, image_options_for  # noqa: E402
from metakit.errors import MetakitError  # noqa: E402
from metakit.predict import load  # noqa: E402
from metakit.serve import LOCAL_HOSTS, SERVE_EXTRA_HINT, ServeLimits, bind_socket, is_local_host  # noqa: E402
from metakit.serve.app import create_app  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "docs" / "figures" / "serve.png"

# Three held-out Armenian capitals that look nothing alike: Ա, Ժ, Օ.
LETTERS = ("AYB", "ZHE", "OH")


def _cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    # The same cache conftest's autouse fixture points METAKIT_CACHE at, which module fixtures run before.
    return str(tmp_path_factory.getbasetemp() / "cache")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ProtoNet run on 28 px Glyphs with 3 drawers per letter, meta-trained for a few seconds."""
    root = tmp_path_factory.mktemp("serve-run")
    cfg = {
        "name": "serve-glyphs",
        "dataset": {"name": "glyphs", "split": "group", "image_size": 28, "drawers": 3},
        "backbone": {"name": "conv4", "hidden": 16},
        "learner": {"name": "protonet"},
        "episodes": {"ways": 5, "shots": 1, "queries": 2, "meta_batch": 1},
        "eval": {"ways": [5], "shots": [1], "queries": 2, "episodes": 4, "val_episodes": 4},
        "train": {"steps": 150, "val_every": 50, "threads": 1},
    }
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAKIT_CACHE", _cache(tmp_path_factory))
        assert main(["train", str(root / "cfg.yaml"), "--out", str(root / "run"), "--no-progress"]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def letters(image_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """PNG files of three held-out letters, drawn as people draw them (dark on white): drawers 0-2 of each."""
    out = tmp_path_factory.mktemp("letters")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAKIT_CACHE", _cache(tmp_path_factory))
        test = load_splits("glyphs", split="group", seed=0, fractions=(0.7, 0.1, 0.2), image_size=28, drawers=3)["test"]
    options = image_options_for("glyphs", {"image_size": 28})
    files: dict[str, list[Path]] = {}
    for word in LETTERS:
        index = next(i for i, n in enumerate(test.class_names) if n.endswith(f"ARMENIAN CAPITAL LETTER {word}"))
        code = test.class_names[index].split()[0]
        label = f"{chr(int(code[2:], 16))} {word.lower()}"
        images = test.images[test.labels == index]
        files[label] = []
        for k, image in enumerate(images):
            path = out / f"{word.lower()}{k}.png"
            image_from_tensor(image, options).save(path)
            files[label].append(path)
    return files


@pytest.fixture(scope="module")
def model(image_run: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAKIT_CACHE", _cache(tmp_path_factory))
        return load(image_run)


@pytest.fixture(scope="module")
def reference(image_run: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A second, independent load of the run: what the Python API answers."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAKIT_CACHE", _cache(tmp_path_factory))
        return load(image_run)


@pytest.fixture(scope="module")
def client(model) -> TestClient:  # noqa: ANN001
    return TestClient(create_app(model))


def multipart(support: dict[str, list[Path]], queries: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    parts = [(f"support:{label}", (p.name, p.read_bytes(), "image/png")) for label, paths in support.items() for p in paths]
    return parts + [("query", (p.name, p.read_bytes(), "image/png")) for p in queries]


def one_line_error(response, status: int, needle: str) -> str:  # noqa: ANN001
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert needle in message and "\n" not in message and "Traceback" not in message
    return message


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels: what a decompression bomb looks like unopened."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------------------------
# The JSON API


def test_health_and_page(client: TestClient) -> None:
    info = client.get("/health").json()
    assert info["run"] == "serve-glyphs" and info["learner"] == "protonet" and info["dataset"] == "glyphs"
    assert info["kind"] == "image" and info["checkpoint"] == "best" and info["input_shape"] == [1, 28, 28]
    assert info["limits"]["max_files"] == 200
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"] and 'id="predict"' in page.text
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind) and response.content
    one_line_error(client.get("/nope"), 404, "Not Found: this server has GET / (the page), GET /health and POST /predict")
    one_line_error(client.get("/predict"), 405, "Method Not Allowed")


def test_predict_gives_the_python_apis_labels_and_probabilities(client: TestClient, reference, letters) -> None:  # noqa: ANN001
    support = {label: paths[:2] for label, paths in letters.items()}
    queries = [paths[2] for paths in letters.values()] + [letters[next(iter(letters))][0]]
    response = client.post("/predict", files=multipart(support, queries))
    assert response.status_code == 200, response.text
    answer = response.json()
    labels = [label for label, paths in support.items() for _ in paths]
    expected = reference.fit([p for paths in support.values() for p in paths], labels).predict(queries)
    probs, classes = reference.predict_proba(queries)
    assert answer["classes"] == classes == list(letters)  # class names (non-ASCII) survive the multipart field names
    assert answer["support"] == {label: 2 for label in letters}
    assert [p["file"] for p in answer["predictions"]] == [q.name for q in queries]
    assert [p["label"] for p in answer["predictions"]] == expected
    np.testing.assert_allclose([p["probabilities"] for p in answer["predictions"]], probs.numpy(), atol=1e-6)
    for p in answer["predictions"]:
        assert p["probability"] == pytest.approx(max(p["probabilities"]), abs=1e-9)


def test_a_copy_of_a_support_image_gets_its_class(client: TestClient, letters) -> None:  # noqa: ANN001
    # One shot per class: ProtoNet's prototype is that image, so its copy is at distance 0 from it.
    support = {label: [paths[0]] for label, paths in letters.items()}
    queries = [paths[0] for paths in reversed(letters.values())]
    answer = client.post("/predict", files=multipart(support, queries)).json()
    assert [p["label"] for p in answer["predictions"]] == list(reversed(letters))


@pytest.fixture(scope="module")
def small_client(model) -> TestClient:  # noqa: ANN001
    return TestClient(create_app(model, limits=ServeLimits(max_upload_mb=0.02, max_files=4, max_megapixels=0.01)))


def test_bad_uploads_get_one_line_4xx_answers(client: TestClient, small_client: TestClient, letters, tmp_path: Path) -> None:  # noqa: ANN001
    (a, pa), (b, pb), (c, _) = [(label, paths) for label, paths in letters.items()]
    png = lambda p: (p.name, p.read_bytes(), "image/png")  # noqa: E731
    two = [(f"support:{a}", png(pa[0])), (f"support:{b}", png(pb[0]))]
    q = [("query", png(pa[2]))]
    post = client.post

    one_line_error(post("/predict", files=[*two, ("query", ("notes.png", b"these are not pixels", "image/png"))]),
                   400, "notes.png is not an image this server can read")
    one_line_error(post("/predict", files=[*two, ("query", ("empty.png", b"", "image/png"))]), 400, "empty.png is empty")
    broken = pa[2].read_bytes()[:60]  # a real PNG header, cut before its pixels
    one_line_error(post("/predict", files=[*two, ("query", ("cut.png", broken, "image/png"))]), 400, "cut.png: cannot read")
    one_line_error(post("/predict", files=[(f"support:{a}", png(pa[0])), (f"support:{a}", png(pa[1])), *q]),
                   400, f"at least 2 classes (got only '{a}')")
    one_line_error(post("/predict", files=[("class", (None, a)), ("class", (None, b)), ("class", (None, c)), *two, *q]),
                   400, f"class '{c}' has no support images; add at least one, or remove the class")
    one_line_error(post("/predict", files=two), 400, "no query images")
    one_line_error(post("/predict", files=[("class", (None, "  ")), *two, *q]), 400, "a class has no name")
    one_line_error(post("/predict", files=[("class", (None, a)), ("class", (None, a)), *two, *q]), 400, "named twice")
    # Class fields may come after their images (programs build requests in any order).
    assert post("/predict", files=[*two, *q, ("class", (None, a)), ("class", (None, b))]).status_code == 200
    one_line_error(post("/predict", files=[*two, *q, ("labels", (None, "x"))]), 400, "unexpected field 'labels'")
    one_line_error(post("/predict", json={"support": {}, "query": []}), 415, "POST multipart/form-data")
    # Decompression bombs are refused from their header, unread: past Pillow's own guard, and past ours.
    one_line_error(post("/predict", files=[*two, ("query", ("bomb.png", png_header(50_000, 50_000), "image/png"))]),
                   413, "bomb.png has more pixels than 40 megapixels allow")
    one_line_error(post("/predict", files=[*two, ("query", ("big.png", png_header(8000, 6000), "image/png"))]),
                   413, "big.png is 8000x6000 pixels (48 megapixels), above the limit of 40")

    # Limits of a server started with --max-upload-mb 0.02 --max-files 4 --max-megapixels 0.01.
    small = small_client.post
    one_line_error(small("/predict", files=[*two, ("query", ("large.png", b"\0" * 30_000, "image/png"))]),
                   413, "larger than 0.02 MB")
    five = [*two, (f"support:{b}", png(pb[1])), ("query", png(pa[2])), ("query", png(pb[2]))]
    one_line_error(small("/predict", files=five), 413, "above the limit of 4")
    one_line_error(small("/predict", files=[*two, ("query", ("wide.png", png_header(200, 100), "image/png"))]),
                   413, "wide.png is 200x100 pixels (0.02 megapixels), above the limit of 0.01")
    assert small("/predict", files=[*two, *q]).status_code == 200


def test_limits_are_checked_when_the_server_is_made() -> None:
    with pytest.raises(MetakitError, match=r"--max-upload-mb must be a number > 0"):
        ServeLimits(max_upload_mb=0)
    with pytest.raises(MetakitError, match=r"--max-files must be an integer >= 2"):
        ServeLimits(max_files=1)


# --------------------------------------------------------------------------------------------
# A text run


class ServeStubEncoder(te.Encoder):
    """A cheap deterministic encoder (hashed bag of words): tests need no language model."""

    name = "serve-stub"

    def cache_id(self) -> str:
        return "serve-stub-1"

    def encode(self, texts, batch_size: int = 64) -> np.ndarray:  # noqa: ANN001
        out = np.zeros((len(texts), 32), np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % 32] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


te.register_encoder("serve-stub", ServeStubEncoder)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve-text")
    words = ["pay", "refund", "lights", "music", "alarm", "weather", "taxi", "recipe"]
    rows = ["text,label"] + [f"please {w} thing {k},{w}" for w in words for k in range(4)]
    (root / "texts.csv").write_text("\n".join(rows) + "\n")
    cfg = {
        "name": "serve-text",
        "dataset": {"name": "csv", "path": str(root / "texts.csv"), "encoder": "serve-stub", "split": "class",
                    "fractions": [0.5, 0.25, 0.25]},
        "backbone": {"name": "projection", "dims": [32]},
        "learner": {"name": "protonet", "distance": "cosine"},
        "episodes": {"ways": 2, "shots": 1, "queries": 2, "meta_batch": 1},
        "eval": {"ways": [2], "shots": [1], "queries": 2, "episodes": 2, "val_episodes": 2},
        "train": {"steps": 2, "val_every": 2, "threads": 1},
    }
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAKIT_CACHE", _cache(tmp_path_factory))
        assert main(["train", str(root / "cfg.yaml"), "--out", str(root / "run"), "--no-progress"]) == 0
    return root / "run"


def test_text_run_takes_json_sentences(text_run: Path) -> None:
    client = TestClient(create_app(load(text_run)))
    info = client.get("/health").json()
    assert info["kind"] == "text" and info["dataset"] == "csv"
    support = {"money": ["pay my bill", "send a refund please"], "home": ["turn on the lights", "play some music"]}
    query = ["refund my money", "lights off", "music loud please"]
    response = client.post("/predict", json={"support": support, "query": query})
    assert response.status_code == 200, response.text
    answer = response.json()
    reference = load(text_run)
    expected = reference.fit([t for texts in support.values() for t in texts], [c for c, ts in support.items() for _ in ts])
    assert answer["classes"] == ["money", "home"]
    assert [p["text"] for p in answer["predictions"]] == query
    assert [p["label"] for p in answer["predictions"]] == expected.predict(query)
    np.testing.assert_allclose([p["probabilities"] for p in answer["predictions"]], expected.predict_proba(query)[0].numpy(),
                               atol=1e-6)

    one_line_error(client.post("/predict", files=[("query", ("a.png", b"x", "image/png"))]), 415, "POST application/json")
    one_line_error(client.post("/predict", content=b"{not json", headers={"content-type": "application/json"}),
                   400, "not valid UTF-8 JSON")
    one_line_error(client.post("/predict", json={"support": {**support, "empty": []}, "query": query}),
                   400, "class 'empty' has no support sentences")
    one_line_error(client.post("/predict", json={"support": support, "query": ["ok", 3]}), 400, "query sentence 2 is not")
    one_line_error(client.post("/predict", json={"support": support}), 400, "needs a 'support' object and a 'query' list")
    twice = b'{"support": {"a": ["x y"], "b": ["y z"], "a": ["z w"]}, "query": ["x"]}'
    one_line_error(client.post("/predict", content=twice, headers={"content-type": "application/json"}),
                   400, "key 'a' appears twice")


# --------------------------------------------------------------------------------------------
# The command line


def test_serve_without_the_extra_says_how_to_install(image_run: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # noqa: ANN001
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now raises ImportError
    assert main(["serve", str(image_run)]) == 2
    err = capsys.readouterr().err
    assert SERVE_EXTRA_HINT in " ".join(err.split()) and "Traceback" not in err


def test_serve_bad_arguments_fail_in_one_line(image_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # noqa: ANN001
    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert "does not exist; pass the --out of a metakit train run" in capsys.readouterr().err
    assert main(["serve", str(image_run), "--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb must be a number > 0" in capsys.readouterr().err
    taken = bind_socket("127.0.0.1", 0)
    taken.listen(1)  # another server on the port
    try:
        with pytest.raises(MetakitError, match=r"port \d+ on 127.0.0.1 is already in use; pick another with --port"):
            bind_socket("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()

    # Any other address gets a warning line before it binds; nothing is bound here (the binding is stubbed).
    def no_bind(host: str, port: int) -> socket.socket:
        raise MetakitError(f"not binding {host} in tests")

    monkeypatch.setattr("metakit.serve.bind_socket", no_bind)
    assert main(["serve", str(image_run), "--host", "0.0.0.0"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: listening on 0.0.0.0, so other machines can reach this page" in err and "not binding 0.0.0.0" in err
    assert all(is_local_host(h) for h in LOCAL_HOSTS) and not is_local_host("0.0.0.0") and not is_local_host("example.org")


@pytest.mark.slow
def test_metakit_serve_starts_answers_and_stops(image_run: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    env = {**os.environ, "METAKIT_CACHE": _cache(tmp_path_factory), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "metakit", "serve", str(image_run), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # the announcement, once the model is loaded and the port bound
        assert "metakit serve: serve-glyphs (protonet on glyphs" in line, line + proc.stderr.read()
        url = line.split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        for _ in range(50):  # bounded: uvicorn starts listening right after the announcement
            try:
                with urllib.request.urlopen(url + "health", timeout=5) as response:
                    info = json.loads(response.read())
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("metakit serve did not answer /health within 5 s")
        assert info["run"] == "serve-glyphs" and info["kind"] == "image"
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl+C
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0 and "metakit serve: stopped" in out, err
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------------
# The page in a real browser


@pytest.fixture
def live_server():  # noqa: ANN201
    """Start an app for a model on a free 127.0.0.1 port, served by Uvicorn in a thread as metakit serve runs it."""
    import uvicorn

    running: list[tuple[uvicorn.Server, threading.Thread, socket.socket]] = []

    def start(model) -> str:  # noqa: ANN001
        sock = bind_socket("127.0.0.1", 0)
        app = create_app(model, allowed_hosts=list(LOCAL_HOSTS))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running.append((server, thread, sock))
        for _ in range(100):  # bounded wait for startup
            if server.started:
                break
            time.sleep(0.05)
        assert server.started, "uvicorn did not start within 5 s"
        return f"http://127.0.0.1:{sock.getsockname()[1]}/"

    yield start
    for server, thread, sock in running:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def browser(tmp_path: Path):  # noqa: ANN201
    """Headless Chromium driven by Selenium, with the flags a closed network and a root user need."""
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("headless Chromium not found (needs chromium and chromedriver on PATH: "
                    "apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (in the dev extra)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,900", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


class Page:
    """The few things the tests do on the page."""

    def __init__(self, browser, url: str) -> None:  # noqa: ANN001
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.b, self.by, self.wait = browser, By, WebDriverWait(browser, 60)
        browser.get(url)
        self.wait.until(lambda b: self.body("data-ready") == "true")

    def body(self, attribute: str) -> str | None:
        return self.b.find_element(self.by.TAG_NAME, "body").get_attribute(attribute)

    def find(self, css: str, root=None):  # noqa: ANN001, ANN201
        return (root or self.b).find_element(self.by.CSS_SELECTOR, css)

    def find_all(self, css: str, root=None) -> list:  # noqa: ANN001
        return (root or self.b).find_elements(self.by.CSS_SELECTOR, css)

    def class_cards(self, n: int) -> list:
        while len(self.find_all(".class-card")) < n:
            self.find("#add-class").click()
        return self.find_all(".class-card")

    def predict(self) -> None:
        before = self.body("data-done")
        self.find("#predict").click()
        self.wait.until(lambda _b: self.body("data-done") != before)

    def labels(self) -> list[str]:
        return [self.find(".result-label", r).text for r in self.find_all(".result")]


@pytest.mark.slow
def test_the_page_in_headless_chromium(live_server, browser, model, reference, letters) -> None:  # noqa: ANN001
    page = Page(browser, live_server(model))
    assert "serve-glyphs" in page.find("#run-info").text
    cards = page.class_cards(3)
    assert len(cards) == 3
    for card, (label, paths) in zip(cards, letters.items()):
        page.find(".class-name", card).send_keys(label)
        page.find(".support-files", card).send_keys("\n".join(str(p) for p in paths[:2]))
        page.wait.until(lambda _b, card=card: len(page.find_all(".thumb", card)) == 2)

    page.predict()  # no queries yet: the server's 4xx message is shown on the page
    error = page.find("#error")
    assert error.is_displayed() and "no query images" in error.text

    queries = [paths[2] for paths in letters.values()]
    page.find("#query-files").send_keys("\n".join(str(p) for p in queries))
    page.predict()
    assert not page.find("#error").is_displayed()
    support = [p for paths in letters.values() for p in paths[:2]]
    expected = reference.fit(support, [label for label in letters for _ in range(2)]).predict(queries)
    results = page.find_all(".result")
    assert page.labels() == expected
    assert [r.get_attribute("data-label") for r in results] == expected
    assert all(len(page.find_all(".bar-row", r)) == 3 for r in results)

    # The whole page in one picture: a viewport as tall as the page (headless windows stay screen-sized).
    height = int(browser.execute_script("return document.documentElement.scrollHeight"))
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 1200, "height": min(height, 2400), "deviceScaleFactor": 1, "mobile": False})
    png = browser.get_screenshot_as_png()
    assert Image.open(io.BytesIO(png)).size == (1200, min(height, 2400))
    from metakit.utils import atomic_path

    with atomic_path(SCREENSHOT) as tmp:  # written only now that everything above passed
        tmp.write_bytes(png)


@pytest.mark.slow
def test_the_page_takes_sentences_for_a_text_run(live_server, browser, text_run: Path) -> None:  # noqa: ANN001
    page = Page(browser, live_server(load(text_run)))
    assert page.body("data-kind") == "text" and not page.find("#query-files").is_displayed()
    support = {"money": ["pay my bill", "send a refund please"], "home": ["turn on the lights", "play some music"]}
    query = ["refund my money", "lights off", "music loud please"]
    for card, (label, texts) in zip(page.class_cards(2), support.items()):
        page.find(".class-name", card).send_keys(label)
        page.find(".support-text", card).send_keys("\n".join(texts))
    page.find("#query-text").send_keys("\n".join(query))
    page.predict()
    assert not page.find("#error").is_displayed(), page.find("#error").text
    expected = load(text_run).fit([t for ts in support.values() for t in ts], [c for c, ts in support.items() for _ in ts])
    assert page.labels() == expected.predict(query)
    assert [page.find(".result-text", r).text for r in page.find_all(".result")] == query
