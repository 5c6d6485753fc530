"""The explorer's server: answers through the pipeline, limits, no path traversal, 4xx with a message, concurrent requests."""

import base64
import io
import socket
import struct
import threading
import zlib

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from normgrad import pipeline, viz  # noqa: E402
from normgrad.cli import main  # noqa: E402
from normgrad.defaults import defaults_for  # noqa: E402
from normgrad.serve import Explorer, create_app  # noqa: E402
from web import picture, tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def explorer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("listed")
    listed = [picture(folder / "a.png", seed=1), picture(folder / "sub" / "b.jpg", (80, 120), seed=2)]
    return Explorer(tiny_model(), listed, listed_names=["a.png", "sub/b.jpg"])


@pytest.fixture(scope="module")
def client(explorer):
    return TestClient(create_app(explorer, max_upload_bytes=200_000), raise_server_exceptions=False)


def png_bytes(size=(96, 72), seed=0, noise=True) -> bytes:
    buffer = io.BytesIO()
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8) if noise else np.zeros((size[1], size[0], 3), np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(client, data=None):
    answer = client.post("/api/upload", content=data or png_bytes(), headers={"content-type": "image/png", "x-file-name": "caf%C3%A9.png"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def levels(encoded: dict) -> np.ndarray:
    q = np.frombuffer(base64.b64decode(encoded["data"]), dtype="<u2").reshape(encoded["shape"]).astype(np.float64)
    return encoded["min"] + q / 65535 * (encoded["max"] - encoded["min"])


def test_maps_are_the_pipelines(client, explorer):
    opened = upload(client)
    assert opened["name"] == "café.png" and len(opened["predictions"]) == 5 and opened["display"] == [96, 72]
    request = {"image": opened["image"], "method": "normgrad", "target": 3, "layers": ["stage1", "stage2"], "combine": "sum"}
    answer = client.post("/api/explain", json=request)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["target"]["class"] == 3 and [m["layer"] for m in result["maps"]] == ["combined", "stage1", "stage2"]
    from PIL import Image

    photo = Image.open(io.BytesIO(png_bytes()))
    x = pipeline.prepare(photo, explorer.preprocess)[None]  # the explain default's input policy, as the CLI
    maps = pipeline.run_method(
        __import__("normgrad").registry.get_method("normgrad"), explorer.loaded.model, x, torch.tensor([3]), ["stage1", "stage2"]
    )
    expected = pipeline.to_image_size(maps, (72, 96), "sum", layers=True)
    for encoded in result["maps"]:
        reference = expected[encoded["layer"]][0, 0].double().numpy()
        assert np.abs(levels(encoded) - reference).max() <= (reference.max() - reference.min()) / 65535 + 1e-7
    npy = client.get(f"/api/result/{result['result']}/1.npy")
    assert npy.status_code == 200 and "stage1" in npy.headers["content-disposition"]
    assert np.allclose(np.load(io.BytesIO(npy.content)), expected["stage1"][0, 0].numpy(), atol=1e-6)  # the photo's size here
    png = client.get(f"/api/result/{result['result']}/0.png")
    assert png.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content))), np.asarray(viz.overlay(photo, expected["combined"])))


def test_the_default_is_explains(client, explorer):
    """Without a method the explorer computes `normgrad explain`'s default: its layers, each with its own method."""
    defaults = defaults_for(explorer.loaded)
    info = client.get("/api/info").json()
    assert info["methods"][0] == "default" and info["explain_default"]["layers"] == list(defaults.layers)
    opened = upload(client)
    result = client.post("/api/explain", json={"image": opened["image"], "target": 2}).json()
    assert result["method"] == "default" and result["layers"] == list(defaults.layers)
    from PIL import Image

    x = pipeline.prepare(Image.open(io.BytesIO(png_bytes())), defaults.preprocess)[None]
    expected = pipeline.to_image_size(pipeline.run_method(defaults.method, explorer.loaded.model, x, torch.tensor([2]), defaults.layers),
                                      (72, 96), "product")  # fmt: skip
    combined = expected[pipeline.COMBINED][0, 0].double().numpy()
    assert np.abs(levels(result["maps"][0]) - combined).max() <= (combined.max() - combined.min()) / 65535 + 1e-7
    refused = client.post("/api/explain", json={"image": opened["image"], "method": "default", "lr": 0.1})
    assert refused.status_code == 400 and "only apply to meta" in refused.json()["error"]


def test_methods_targets_and_meta_step(client):
    token = upload(client)["image"]
    auto = client.post("/api/explain", json={"image": token}).json()
    named = client.post("/api/explain", json={"image": token, "target": "class 5"}).json()
    assert named["target"]["class"] == 5 and auto["target"]["class"] == upload(client)["predictions"][0]["class"]
    assert [m["layer"] for m in client.post("/api/explain", json={"image": token, "method": "gradient"}).json()["maps"]] == ["input"]
    assert client.post("/api/explain", json={"image": token, "method": "center"}).json()["target"] is None
    plain = client.post("/api/explain", json={"image": token, "method": "normgrad", "target": 1, "layers": ["stage2"]}).json()
    meta0 = client.post("/api/explain", json={"image": token, "target": 1, "layers": ["stage2"], "method": "meta", "lr": 0}).json()
    meta = client.post("/api/explain", json={"image": token, "target": 1, "layers": ["stage2"], "method": "meta", "lr": 5.0}).json()
    assert np.allclose(levels(plain["maps"][0]), levels(meta0["maps"][0]))  # lr 0 is the plain map
    assert not np.allclose(levels(plain["maps"][0]), levels(meta["maps"][0]))


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"{", 400, "not valid JSON"),
        (b"[1]", 400, "JSON object"),
        (b'{"image": "nope"}', 404, "unknown or expired image"),
        (b'{"image": "TOKEN", "method": "normgrd"}', 400, "did you mean 'normgrad'"),
        (b'{"image": "TOKEN", "layers": ["stage9"]}', 400, "unknown layer 'stage9'"),
        (b'{"image": "TOKEN", "layers": []}', 400, "no layer chosen"),
        (b'{"image": "TOKEN", "layers": "stage1"}', 400, "list of layer names"),
        (b'{"image": "TOKEN", "target": 99}', 400, "out of range"),
        (b'{"image": "TOKEN", "target": "bold & quoted"}', 400, "unknown class name"),
        (b'{"image": "TOKEN", "target": true}', 400, "target must be"),
        (b'{"image": "TOKEN", "lr": 0.1}', 400, "only apply to meta"),
        (b'{"image": "TOKEN", "method": "meta", "lr": -1}', 400, "lr must be a finite number"),
        (b'{"image": "TOKEN", "method": "meta", "lr": 1e999}', 400, "finite"),
        (b'{"image": "TOKEN", "method": "meta", "steps": 1.5}', 400, "steps must be an integer"),
        (b'{"image": "TOKEN", "method": "meta", "lr": 1e308}', 400, "at most 3.403e+38"),
        (b'{"image": "TOKEN", "method": "meta", "lr": 1' + b"0" * 400 + b"}", 400, "at most 3.403e+38"),  # a 400-digit JSON integer
        (b'{"image": "TOKEN", "method": "meta", "steps": 1000000}', 400, "steps must be an integer from"),
        (b'{"image": "TOKEN", "method": "meta", "steps": 0}', 400, "steps must be an integer from 1 to 100"),
        (b'{"image": "TOKEN", "method": "adversarial", "steps": NaN}', 400, "steps must be an integer from"),
        (b'{"image": "TOKEN", "method": "meta:meta"}', 400, "inner steps do not nest"),
        (b'{"image": "TOKEN", "method": "adversarial:meta:selective"}', 400, "inner steps do not nest"),
        (b'{"image": "TOKEN", "method": "gradient", "layers": ["stage1"]}', 400, "takes no layers"),
        (b'{"image": "TOKEN", "combine": "max"}', 400, "unknown combine"),
        (b'{"image": "TOKEN", "colour": "red"}', 400, "unknown field(s) colour"),
    ],
)
def test_malformed_requests_get_a_4xx_with_a_message(client, body, status, words):
    token = upload(client)["image"]
    answer = client.post("/api/explain", content=body.replace(b"TOKEN", token.encode()), headers={"content-type": "application/json"})
    assert answer.status_code == status and words in answer.json()["error"], answer.text
    assert "Traceback" not in answer.text and answer.headers["content-type"] == "application/json"


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width × height`` (a decompression bomb's shape), with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b"")


def test_uploads_are_limited_in_bytes_pixels_and_kind(client):
    cases = [
        (png_bytes((300, 300)), "image/png", 413, "the limit is 0.2 MiB"),  # 270 kB of noise > 200 kB
        (huge_png_header(10000, 9000), "image/png", 400, "megapixels; the limit is 67.1"),
        (png_bytes((2100, 100), noise=False), "image/png", 400, "aspect ratio of 21:1"),
        (b"GIF89a but not really", "image/gif", 400, "cannot read image"),
        (b"", "image/png", 400, "upload is empty"),
        (png_bytes(), "multipart/form-data; boundary=x", 415, "image file itself"),
    ]
    for data, kind, status, words in cases:
        answer = client.post("/api/upload", content=data, headers={"content-type": kind})
        assert answer.status_code == status and words in answer.json()["error"], answer.text

    def pieces():  # no Content-Length: refused while streaming
        for _ in range(10):
            yield b"x" * 50_000

    answer = client.post("/api/upload", content=pieces(), headers={"content-type": "image/png"})
    assert answer.status_code == 413


def test_only_its_own_assets_and_listed_images_are_served(client):
    assert client.get("/").status_code == 200 and "default-src 'self'" in client.get("/").headers["content-security-policy"]
    assert client.get("/static/explorer.js").status_code == 200
    for path in ["/static/../../../../etc/passwd", "/static/..%2f..%2f..%2fetc%2fpasswd", "/static/%2e%2e/%2e%2e/etc/passwd",
                 "/static/explorer.html", "/static/__init__.py", "/..%2f..%2fetc/passwd", "/api/listed/2", "/api/listed/-1",
                 "/api/listed/..%2f0", "/api/photo/..%2f..%2fetc%2fpasswd", "/api/result/x/0.npy", "/etc/passwd"]:  # fmt: skip
        answer = client.get(path)
        assert answer.status_code == 404 and "root:" not in answer.text, path
    assert client.get("/api/listed/1").headers["content-type"] == "image/jpeg"
    assert client.post("/api/open/1").json()["name"] == "sub/b.jpg"
    assert client.post("/api/open/7").status_code == 404
    assert client.get("/api/explain").status_code == 405


def test_the_host_header_is_checked_on_loopback(explorer):
    guarded = TestClient(create_app(explorer, allowed_hosts=["127.0.0.1", "localhost"]), base_url="http://localhost")
    assert guarded.get("/api/info").status_code == 200
    assert guarded.get("/api/info", headers={"host": "attacker.example"}).status_code == 400  # DNS rebinding


def test_concurrent_requests_get_the_same_maps_as_one_at_a_time(client):
    token = upload(client)["image"]
    settings = [{"image": token, "target": t, "layers": ["stem", "stage1", "stage2"]} for t in (0, 4)]
    settings += [{"image": token, "target": 2, "method": "meta", "lr": 1.0, "layers": ["stage2"]}]
    alone = [[levels(m) for m in client.post("/api/explain", json=s).json()["maps"]] for s in settings]
    for _ in range(3):
        answers: list = [None] * len(settings)
        start = threading.Barrier(len(settings))

        def ask(k, start=start, answers=answers):
            start.wait()
            answers[k] = client.post("/api/explain", json=settings[k]).json()

        threads = [threading.Thread(target=ask, args=(k,)) for k in range(len(settings))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for k, answer in enumerate(answers):
            assert answer["target"]["class"] == settings[k]["target"]
            for got, expected in zip([levels(m) for m in answer["maps"]], alone[k]):
                assert np.array_equal(got, expected)


def test_serve_refuses_a_taken_port_in_one_line(capsys):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        assert main(["serve", "--port", str(taken.getsockname()[1]), "--weights", "none"]) == 2
    finally:
        taken.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot listen on 127.0.0.1" in err
    from normgrad.cli import build_parser

    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"


def big_png(side: int = 8192) -> bytes:
    """An 8192² photo that compresses to a small upload (a smooth gradient): 200 MB once decoded."""
    from PIL import Image

    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([np.broadcast_to(ramp, (side, side))] * 3, axis=-1)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def big_upload():
    return big_png()


def test_photos_keep_no_full_size_picture_and_the_caches_are_bounded_in_bytes(explorer, big_upload, monkeypatch):
    from normgrad.serve import explorer as explorer_module

    roomy = TestClient(create_app(explorer, max_upload_bytes=len(big_upload) + 1), raise_server_exceptions=False)
    tokens = [upload(roomy, big_upload)["image"] for _ in range(3)]
    for token in tokens:
        kept = explorer._photos[token]
        assert kept.size == (8192, 8192) and kept.nbytes < 2 << 20  # the model input, a display JPEG, the upload's bytes
        assert not any(isinstance(value, __import__("PIL").Image.Image) for value in vars(kept).values())
    monkeypatch.setattr(explorer_module, "MAX_PHOTO_BYTES", explorer._photos[tokens[-1]].nbytes * 2)
    newest = upload(roomy, big_upload)["image"]
    assert sum(p.nbytes for p in explorer._photos.values()) <= explorer_module.MAX_PHOTO_BYTES
    assert client_answer(roomy, tokens[0]).status_code == 404  # the oldest expired
    assert client_answer(roomy, newest).status_code == 200


def client_answer(client, token):
    return client.post("/api/explain", json={"image": token, "method": "normgrad", "layers": ["stage2"]})


def test_a_full_size_download_decodes_the_upload_again(client, explorer, big_upload):
    roomy = TestClient(create_app(explorer, max_upload_bytes=len(big_upload) + 1), raise_server_exceptions=False)
    token = upload(roomy, png_bytes((300, 200)))["image"]
    result = client_answer(roomy, token).json()["result"]
    png = roomy.get(f"/api/result/{result}/0.png")
    from PIL import Image

    assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (300, 200)


def test_too_many_layers_are_refused(client):
    token = upload(client)["image"]
    answer = client.post("/api/explain", json={"image": token, "method": "normgrad", "layers": ["stage1"] * 65})
    assert answer.status_code == 400 and "at most 64" in answer.json()["error"]


def test_a_cancelled_explanation_stops_at_once_and_frees_the_model(explorer):
    """A client that has gone: the meta step stops at the model's next module, hooks removed, the next request runs."""
    from normgrad.serve import Cancelled

    token = explorer.open_upload(png_bytes(), "a.png")["image"]
    cancel, calls = threading.Event(), []

    def count(*_):
        calls.append(1)
        cancel.set()  # the client goes away during the first forward pass

    handle = explorer.loaded.model.register_forward_hook(count)
    hooks_before = [len(m._forward_pre_hooks) for m in explorer.loaded.model.modules()]
    try:
        with pytest.raises(Cancelled):
            explorer.explain({"image": token, "method": "meta", "steps": 100, "layers": ["stage2"]}, cancel)
    finally:
        handle.remove()
    assert len(calls) == 1  # 101 forward passes without the cancellation
    assert [len(m._forward_pre_hooks) for m in explorer.loaded.model.modules()] == hooks_before
    assert explorer.explain({"image": token, "method": "normgrad", "layers": ["stage2"]})["maps"]
    with pytest.raises(Cancelled):  # cancelled before its turn: never runs
        explorer.explain({"image": token, "method": "normgrad", "layers": ["stage2"]}, cancel)


def test_the_app_cancels_the_work_of_a_client_that_disconnects(explorer):
    import asyncio
    import time

    token = explorer.open_upload(png_bytes(), "a.png")["image"]
    body = json_bytes({"image": token, "method": "meta", "steps": 100, "layers": ["stage2"]})
    calls = []
    # each forward takes ≥ 20 ms, so that 101 of them take seconds however fast the machine: the disconnect must stop them
    handle = explorer.loaded.model.register_forward_hook(lambda *_: (calls.append(1), time.sleep(0.02)))
    sent = []

    async def receive():
        if not sent:
            sent.append(1)
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message):
        pass

    scope = {"type": "http", "method": "POST", "path": "/api/explain", "raw_path": b"/api/explain", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"host", b"testserver")], "scheme": "http",
             "server": ("testserver", 80), "client": ("127.0.0.1", 1), "http_version": "1.1", "root_path": ""}  # fmt: skip
    try:
        asyncio.run(create_app(explorer)(scope, receive, send))
    finally:
        handle.remove()
    assert len(calls) < 101  # stopped long before the 101 forward passes
    assert explorer.model_lock.acquire(timeout=5)
    explorer.model_lock.release()


def json_bytes(value) -> bytes:
    import json

    return json.dumps(value).encode()


def test_a_stopping_server_cancels_running_work(explorer):
    from normgrad.cli.serve import server
    from normgrad.serve import Cancelled

    uvicorn = pytest.importorskip("uvicorn")
    token = explorer.open_upload(png_bytes(), "a.png")["image"]
    try:
        server(uvicorn.Config(create_app(explorer)), explorer).handle_exit(15, None)  # the first SIGTERM
        with pytest.raises(Cancelled):
            explorer.explain({"image": token, "method": "meta", "steps": 100, "layers": ["stage2"]})
    finally:
        explorer.stopping.clear()


@pytest.mark.parametrize("path, body, kind", [("/api/upload", None, "image/png"), ("/api/open/0", b"", "application/x-www-form-urlencoded"),
                                              ("/api/explain", b'{"image": "x"}', "application/json")])  # fmt: skip
@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://testserver.evil.example", "https://testserver"])
def test_requests_from_another_origin_are_refused(client, path, body, kind, origin):
    answer = client.post(path, content=png_bytes() if body is None else body, headers={"content-type": kind, "origin": origin})
    assert answer.status_code == 403 and "not from the explorer's own page" in answer.json()["error"]


def test_requests_from_its_own_page_or_without_origin_are_served(client):
    for headers in ({"origin": "http://testserver"}, {}):
        answer = client.post("/api/upload", content=png_bytes(), headers={"content-type": "image/png", **headers})
        assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("host, allowed", [("127.0.0.1", True), ("127.0.0.2", True), ("127.1.2.3", True), ("localhost", True),
                                           ("::1", True), ("0.0.0.0", False), ("192.168.1.5", False), ("::", False)])  # fmt: skip
def test_every_loopback_address_keeps_the_host_check(host, allowed):
    from normgrad.cli.serve import allowed_hosts

    hosts = allowed_hosts(host)
    assert (hosts is not None) == allowed
    if allowed:
        assert (f"[{host}]" if ":" in host else host) in hosts and "attacker.example" not in hosts


def test_serve_on_another_loopback_address_checks_the_host_and_does_not_warn(explorer):
    from normgrad.cli.serve import allowed_hosts

    guarded = TestClient(create_app(explorer, allowed_hosts=allowed_hosts("127.0.0.2")), base_url="http://127.0.0.2")
    assert guarded.get("/api/info").status_code == 200
    assert guarded.get("/api/info", headers={"host": "attacker.example"}).status_code == 400


def test_large_buffers_go_back_to_the_system_once_freed():
    """Six 8192² uploads grew the server's RSS to 2.7 GB with glibc's default heap; mmap'd buffers are returned on free."""
    from normgrad.serve.app import return_large_buffers_to_the_system

    if not __import__("sys").platform.startswith("linux"):
        pytest.skip("glibc only")

    def rss_mib() -> float:
        return next(int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmRSS"))

    assert return_large_buffers_to_the_system()
    before = rss_mib()
    for _ in range(3):
        buffer = np.ones(50 << 20, dtype=np.uint8)  # 50 MB, freed at once
        del buffer
    assert rss_mib() - before < 20


def test_a_model_that_needs_sides_divisible_by_k_is_predicted_and_explained_at_such_sizes():
    from normgrad.models import LoadedModel, Preprocess
    from test_block_outputs import Staged

    class Picky(Staged):
        def forward(self, x):
            if x.shape[-2] % 16 or x.shape[-1] % 16:
                raise RuntimeError(f"sides must be multiples of 16; got {tuple(x.shape[-2:])}")
            return super().forward(x)

    explorer = Explorer(LoadedModel("picky", Picky().eval(), Preprocess(size=48), [f"class {i}" for i in range(5)]))
    opened = explorer.open_photo(png_bytes((90, 60)), "wide.png")  # at the model's own size 48x72, which it refuses
    assert opened["predicted_at"] == [64, 48] and all(side % 16 == 0 for side in opened["explained_at"]), opened
