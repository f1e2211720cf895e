"""The app as a hostile remote user meets it: its HTTP API called directly (bypassing the page) with server paths,
foreign files, over-limit and overflowing values; and the request checks in ``core`` that hold for every path in.

A request may load only the models the operator offers, read only files it uploaded, and never sees a Python
message or a file's content.
"""

import json
import os
import socket

import httpx
import pytest

from samplebench.app import core
from samplebench.errors import UsageError

SECRET = "hunter2-do-not-show"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app served as ``samplebench app`` serves it, in this process; its URL and the server-side secrets."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from samplebench.app import launch
    from samplebench.app.ui import App

    folder = tmp_path_factory.mktemp("server")
    secret = folder / "secret.json"  # a JSON file on the server, outside anything uploaded
    secret.write_text(json.dumps({"password": SECRET, "timesteps": [1.0, 0.5], "steps": [{}]}))
    app = App(db=str(folder / "runs.db"))
    port = _free_port()
    demo = launch(app, port=port, block=False)
    yield f"http://127.0.0.1:{port}", secret, app
    demo.close()
    app.close()


def call(url: str, name: str, data: list) -> tuple[str, str | None]:
    """POST to the endpoint ``name`` and read its event stream: (last event, its error message or None)."""
    r = httpx.post(f"{url}/gradio_api/call/{name}", json={"data": data}, timeout=30)
    r.raise_for_status()
    stream = httpx.get(f"{url}/gradio_api/call/{name}/{r.json()['event_id']}", timeout=300).text
    events = [line[len("event: "):] for line in stream.splitlines() if line.startswith("event: ")]
    datas = [line[len("data: "):] for line in stream.splitlines() if line.startswith("data: ")]
    last = json.loads(datas[-1]) if datas and datas[-1] not in ("null", "") else None
    message = last.get("error") if isinstance(last, dict) else None
    assert SECRET not in stream and "Traceback" not in stream, stream
    return events[-1], message


def upload(url: str, name: str, content: bytes) -> dict:
    r = httpx.post(f"{url}/gradio_api/upload", files={"files": (name, content)}, timeout=30)
    r.raise_for_status()
    return {"path": r.json()[0], "meta": {"_type": "gradio.FileData"}, "orig_name": name}


def test_server_files_cannot_be_read_through_the_schedule_upload(server):
    url, secret, _ = server
    for payload in ({"path": str(secret)}, {"path": str(secret), "meta": {"_type": "gradio.FileData"}},
                    str(secret), {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}):
        event, message = call(url, "s3", ["digits", 5, "dpmpp-2m", "0-1", payload])
        assert event == "error" and (message is None or "password" not in message), message


def test_uploads_are_checked_and_never_quoted(server):
    url, _, _ = server
    foreign = upload(url, "notes.json", json.dumps({"password": SECRET, "api_key": SECRET}).encode())
    event, message = call(url, "s3", ["digits", 5, "dpmpp-2m", "0-1", foreign])
    assert event == "error" and message.startswith("the uploaded file is not a valid solver schedule"), message
    binary = upload(url, "x.json", bytes(range(256)) * 8)
    assert call(url, "s3", ["digits", 5, "dpmpp-2m", "0-1", binary])[1].startswith("the uploaded file is not a text")


def test_an_uploaded_schedule_obeys_the_nfe_cap(server):
    from samplebench.usf import known_schedule
    from samplebench.models import load_model
    from samplebench.samplers import make_grid

    url, _, app = server
    grid = make_grid(load_model("digits-gmm").schedule, "time-uniform", 300)
    schedule = known_schedule("ddim", grid)
    assert schedule.nfe == 300 > app.limits.nfe
    event, message = call(url, "s3", ["digits", 5, "dpmpp-2m", "0-1", upload(url, "s.json", schedule.to_json().encode())])
    assert event == "error" and message == f"the uploaded schedule spends 300 NFE; at most {app.limits.nfe} here"


def compare_request(**given) -> list:
    """The compare endpoint's inputs, in the page's order, with ``given`` replacing the defaults."""
    fields = {"model": "digits", "seeds": "0-1", "solver": "ddim", "nfe": 5, "x_axis": "NFE", "x_values": "5",
              "y_axis": "solver", "y_values": "ddim", "z_axis": "none", "z_values": "", "class_label": "auto",
              "guidance": 1.0, "prompt": "", "numbers": False}
    return list((fields | given).values())


@pytest.mark.parametrize("name, data, expected", [
    ("compare", compare_request(model="/etc"), "not in the list of choices"),
    ("compare", compare_request(seeds="18446744073709551615-18446744073709551616"), "above the largest seed"),
    ("compare", compare_request(guidance=1e300), "greater than maximum value 15.0"),
    ("compare", compare_request(x_values="100000"), "give whole numbers from 1 to 250"),
    ("compare", compare_request(prompt="x" * 5000), "text of at most"),
    ("compare", compare_request(x_axis="guidance", x_values="1,2,3,4,5", y_axis="NFE", y_values="1,2,3,4"),
     "5 x 4 = 20 cells; at most 16"),
    ("compare", compare_request(z_axis="exit threshold", z_values="0.9|nan"), "is not valid"),
    ("s3", ["digits", 10**9, "dpmpp-2m", "0-1", None], "not in the list of choices"),
    ("align", ["dts", "class:3", 10**12, 4, 20, 1.0], "budget"),
    ("align", ["dts", "mypkg.rewards:steal", 100, 4, 20, 1.0], None),
    ("skipping", ["digits-dit", "dpmpp-2m", 10**9, "0-1", "0.9", ""], "NFE"),
    ("cascade", ["digits-lowdiff", "8:100000,16:2", "", "dpmpp-2m", "0-1"], "at most"),
    ("evaluate", ["digits", ["ddim"], "5", 10**9], None),
])
def test_over_limit_values_are_refused_in_one_line(server, name, data, expected):
    """Refused by Gradio's own component checks or by ``core``'s (which hold without the page too, below)."""
    url, _, app = server
    before = set(app.scratch.iterdir())
    event, message = call(url, name, data)
    assert event == "error"
    if expected is not None:
        assert message is not None and expected in message and "\n" not in message, message
    assert set(app.scratch.iterdir()) == before  # refused before any request folder was made


def test_every_model_that_is_not_offered_gets_the_same_refusal(tmp_path):
    limits = core.Limits()
    (tmp_path / "pipeline").mkdir()
    messages = set()
    for name in (str(tmp_path / "pipeline"), str(tmp_path / "missing"), "/etc", "someone/model", "../x", 3):
        with pytest.raises(UsageError) as e:
            core.check_model(name, limits)
        messages.add(str(e.value))
    assert len(messages) == 1 and str(tmp_path) not in messages.pop()
    for make in (lambda m: core.compare_cells(m, ["ddim"], "5", "0"), lambda m: core.s3_cells(m, 5, "0", "ddim"),
                 lambda m: core.align_cells("dts", "class:3", 100, 1, 10, 1.0, model=m),
                 lambda m: core.skipping_cells(m, "ddim", 5, "0", cache="deepcache:2"),
                 lambda m: core.cascade_cells(m, "8:6,16:4", 0.5, "0", "ddim"),
                 lambda m: core.cascade_cells("digits-lowdiff", "8:6,16:4", None, "0", "ddim", single_model=m)):
        with pytest.raises(UsageError, match="not offered"):
            make(str(tmp_path / "pipeline"))
    offered = core.Limits(models=("digits", str(tmp_path / "pipeline")))
    assert core.check_model(str(tmp_path / "pipeline"), offered) == str(tmp_path / "pipeline")
    assert core.check_model("anything/at-all", core.Limits(models=None)) == "anything/at-all"


def test_only_files_inside_the_upload_folder_are_read(tmp_path):
    root, outside = tmp_path / "uploads", tmp_path / "secret.json"
    (root / "abc").mkdir(parents=True)
    outside.write_text("{}")
    (root / "abc" / "ok.json").write_text("{}")
    (root / "abc" / "link.json").symlink_to(outside)
    (root / "abc" / "big.json").write_text(" " * (core.Limits().upload_bytes + 1))
    assert core.read_upload(str(root / "abc" / "ok.json"), root, core.Limits()) == "{}"
    refusals = set()
    for path in (outside, root / "abc" / "link.json", root / "abc" / ".." / ".." / "secret.json", root / "abc",
                 root / "abc" / "missing.json", None, 7):
        with pytest.raises(UsageError) as e:
            core.read_upload(path, root, core.Limits())
        refusals.add(str(e.value))
    assert refusals == {"the schedule must be a JSON file uploaded through this page"}
    with pytest.raises(UsageError, match="over 64 KiB"):
        core.read_upload(root / "abc" / "big.json", root, core.Limits())
    with pytest.raises(UsageError, match="uploaded through this page"):
        core.read_upload(root / "abc" / "ok.json", None, core.Limits())  # no upload folder: no file is read


@pytest.mark.parametrize("make", [
    lambda: core.compare_cells("digits", ["ddim"], [5, 10**6], "0"),
    lambda: core.compare_cells("digits", ["ddim"], "5", "0", guidance=float("nan")),
    lambda: core.compare_cells("digits", ["ddim"], "5", "0", class_label="x"),
    lambda: core.compare_cells("digits", "ddim", "5", "0"),
    lambda: core.align_cells("dts", "class:3", 100, 1, 10, float("inf")),
    lambda: core.align_cells("dts", "class:3", 100, 1, 10, 1.0, seed=2**64),
    lambda: core.align_cells("rm -rf", "class:3", 100, 1, 10, 1.0),
    lambda: core.align_cells("dts", "class:3", float("nan"), 1, 10, 1.0),
    lambda: core.cascade_cells("digits-lowdiff", "8:6,16:4", float("nan"), "0", "ddim"),
    lambda: core.parse_seeds("1" * 30, 16),
], ids=["nfe-list", "nan-guidance", "class-label", "solvers-string", "inf-lambda", "seed-64-bit", "method",
        "nan-budget", "nan-t-star", "long-seed"])
def test_core_checks_every_value(make):
    with pytest.raises(UsageError):
        make()
