"""End to end in a real browser: run a lab in JupyterLab, drag its slider, read its chart.

A JupyterLab server runs on copies of the labs with its own config, settings and runtime
folders and its own local mesh (a unique LAB_MESH in a temporary LAB_STATE_DIR); Playwright
drives Debian's Chromium (/usr/bin/chromium) against it. Each test runs a lab with Run All,
moves a slider with the mouse as a learner would, waits until the chart shows the result of
that move and checks it against what Istio promises. Screenshots go to tests/artifacts/browser/.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest

from lablib import traffic, widgets

# They start a real mesh (Envoy, Bookinfo, tcp-echo, httpbin) through the labs' own cells.
pytestmark = [pytest.mark.envoy, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
# What worked for Debian's Chromium in a container as root: no sandbox, no GPU, nothing
# fetched in the background.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "browser"
LABS = Path(__file__).resolve().parent.parent / "labs"
# Run All plus the slider's own run may install a mesh and start Bookinfo first.
RUN_ALL_TIMEOUT_S = 300
MOVE_TIMEOUT_S = 90
# The notes in python-deps.md: Run All right after the kernel first looks idle sometimes does
# nothing on a fresh profile; a kernel idle for this long has finished starting.
KERNEL_SETTLED_S = 2.0


@dataclass
class Lab:
    """A running JupyterLab server on copies of the labs."""

    url: str
    token: str

    def api(self, path: str, method: str = "GET") -> Any:
        """Call the server's REST API; the decoded JSON answer (None for an empty one)."""
        answer = httpx.request(method, f"{self.url}/api/{path}", timeout=10,
                               headers={"Authorization": f"token {self.token}"})
        answer.raise_for_status()
        return answer.json() if answer.content else None


# --- Fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Headless Chromium under Playwright, or a skip saying what to install."""
    if not CHROMIUM.exists():
        pytest.skip(f"chromium not found at {CHROMIUM}: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[test]' (or pip install "
                    "playwright); it drives the system chromium, no 'playwright install'")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """JupyterLab on trimmed copies of the labs, with its own mesh; both stopped afterwards."""
    root = tmp_path_factory.mktemp("browser-lab")
    notebooks = root / "labs"
    notebooks.mkdir()
    for name in ("04_traffic_shifting", "06_tcp_traffic_shifting", "07_circuit_breaking"):
        copy_without_clean_up(LABS / f"{name}.ipynb", notebooks / f"{name}.ipynb")
    settings = root / "settings"
    write_settings(settings)
    # Unix socket paths are short: the mesh's state lives in a short folder of its own.
    state = Path(tempfile.mkdtemp(prefix="lkb-"))
    env = {**os.environ,
           "LAB_MESH": f"browser-{os.getpid()}-{secrets.token_hex(3)}",
           "LAB_STATE_DIR": str(state),
           "LAB_BACKEND": "local",
           "JUPYTER_CONFIG_DIR": str(root / "config"),
           "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
           "JUPYTER_DATA_DIR": str(root / "data"),
           "IPYTHONDIR": str(root / "ipython")}
    token = secrets.token_hex(16)
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
            f"--port={free_port()}", f"--ServerApp.token={token}",
            f"--notebook-dir={notebooks}", f"--LabApp.user_settings_dir={settings}",
            f"--LabApp.workspaces_dir={root / 'workspaces'}"]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    log = (root / "jupyterlab.log").open("wb")
    server = subprocess.Popen(argv, env=env, cwd=notebooks, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        url = wait_for_server(server, token, root / "runtime", root / "jupyterlab.log")
        yield Lab(url=url, token=token)
    finally:
        stop_server(server)
        log.close()
        # The kernels started the mesh's daemon, which outlives them by design.
        subprocess.run([sys.executable, "-m", "lablib.cli", "down", env["LAB_MESH"]], env=env,
                       check=False, capture_output=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def page(chromium: Any, lab: Lab, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser page; on the way out, a screenshot and the notebook's kernel stopped."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    tab = context.new_page()
    try:
        yield tab
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / f"{request.node.name}-page.png"
        try:
            tab.screenshot(path=str(shot), full_page=False)
            print(f"screenshot: {shot}")
        finally:
            context.close()
            for session in lab.api("sessions"):
                lab.api(f"sessions/{session['id']}", method="DELETE")


# --- Helpers: server --------------------------------------------------------------------------


def copy_without_clean_up(source: Path, target: Path) -> None:
    """Copy a lab, leaving out its closing sections from "## Clean up" on.

    The test moves a slider after Run All; the clean-up would have deleted what it drives.
    """
    notebook = nbformat.read(source, as_version=4)
    cells = notebook.cells
    end = next((i for i, cell in enumerate(cells)
                if cell.cell_type == "markdown" and cell.source.startswith("## Clean up")),
               len(cells))
    notebook.cells = cells[:end]
    nbformat.write(notebook, target)


def write_settings(folder: Path) -> None:
    """JupyterLab user settings: no news pop-up over the page, every cell kept in the DOM."""
    settings = {
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
            {"fetchNews": "false", "checkForUpdates": False},
        # Windowing renders only the cells in view; the test reads every cell's prompt.
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    }
    for name, values in settings.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_server(server: subprocess.Popen[bytes], token: str, runtime: Path, log: Path
                    ) -> str:
    """The server's URL, once its runtime file is written and /api/status answers."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {server.returncode}:\n"
                               + log.read_text(errors="replace")[-3000:])
        for info in runtime.glob("jpserver-*.json"):
            url = json.loads(info.read_text())["url"].rstrip("/")
            try:
                if httpx.get(f"{url}/api/status", timeout=2,
                             headers={"Authorization": f"token {token}"}).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    raise RuntimeError("JupyterLab did not answer within 60 s:\n"
                       + log.read_text(errors="replace")[-3000:])


def stop_server(server: subprocess.Popen[bytes]) -> None:
    """Stop JupyterLab (it shuts its kernels down); kill its whole group if it lingers."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(server.pid, signal.SIGKILL)  # any kernel left behind, too
    except ProcessLookupError:
        pass
    server.wait(timeout=10)


# --- Helpers: the notebook in the browser ------------------------------------------------------


def open_notebook(page: Any, lab: Lab, name: str) -> None:
    """Open a notebook in JupyterLab (a fresh workspace) and wait until its kernel settled."""
    page.goto(f"{lab.url}/lab/tree/{name}?token={lab.token}&reset")
    page.locator(".jp-NotebookPanel .jp-CodeCell").first.wait_for()
    wait_for_settled_kernel(lab, name)


def wait_for_settled_kernel(lab: Lab, name: str, timeout_s: float = 60) -> None:
    """Wait until the notebook's kernel has been idle, the same kernel, for a while."""
    deadline = time.monotonic() + timeout_s
    seen: tuple[str, float] | None = None
    while time.monotonic() < deadline:
        kernels = [s["kernel"] for s in lab.api("sessions") if s["path"] == name]
        idle = [k["id"] for k in kernels if k["execution_state"] == "idle"]
        if not idle:
            seen = None
        elif seen is None or seen[0] != idle[0]:
            seen = (idle[0], time.monotonic())
        elif time.monotonic() - seen[1] >= KERNEL_SETTLED_S:
            return
        time.sleep(0.2)
    raise AssertionError(f"the kernel of {name} never settled: {lab.api('sessions')}")


def run_all(page: Any) -> None:
    """Run ▸ Run All Cells, then wait until no cell is running or queued.

    Fails with the error output when a cell raised (JupyterLab then stops the run there).
    """
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    prompts = page.locator(".jp-CodeCell .jp-InputPrompt")
    # First cell queued or done: the click took (else the wait below would only time out).
    prompts.first.filter(has_text=re.compile(r"\[(\*|\d+)\]")).wait_for()
    # Queued and running cells show [*]; a cell never run, or dropped after an error, [ ].
    page.wait_for_function(
        """() => {
            const texts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                .map(p => p.textContent.trim());
            return texts.length > 0 && !texts.some(t => t.includes('*'))
                && texts.some(t => /\\d/.test(t));
        }""", timeout=RUN_ALL_TIMEOUT_S * 1000)
    texts = [t.strip() for t in prompts.all_text_contents()]
    if not all(re.fullmatch(r"\[\d+\]:", t) for t in texts):
        errors = page.locator(".jp-OutputArea-output[data-mime-type="
                              "'application/vnd.jupyter.stderr']").all_text_contents()
        raise AssertionError("Run All stopped before the end; prompts "
                             f"{texts}; error output:\n" + "\n".join(errors)[-4000:])


# A learner sees the panel's chart before moving a slider; so does the test. When it stays
# blank, the chart lost its first updates in the browser (plotly's FigureWidget did, in a
# race in its view; the panels now send whole figures).
CHART_DRAWN = "the panel's chart drawn for what its slider shows (a blank chart is a bug)"

# --- Helpers: widgets and charts ---------------------------------------------------------------

# Everything a test reads from a panel, as a learner would see it: each slider's label and
# value, the status line, and each plotly chart's title and traces.
READ_PANEL = """panel => ({
    sliders: Object.fromEntries([...panel.querySelectorAll('.widget-slider')].map(s => [
        s.querySelector('.widget-label').textContent.trim(),
        Number(s.querySelector('[role=slider]').getAttribute('aria-valuenow'))])),
    status: [...panel.querySelectorAll('.widget-html-content')].map(h => h.innerText.trim()),
    // plotly's own, decoded copies: a figure's arrays may arrive base64-encoded.
    charts: [...panel.querySelectorAll('.js-plotly-plot')].map(g => ({
        title: (g._fullLayout && g._fullLayout.title && g._fullLayout.title.text) || '',
        traces: (g._fullData || []).map(t => ({
            name: t.name || '',
            x: Array.from(t.x || []),
            y: Array.from(t.y || []),
            customdata: Array.from(t.customdata || [])}))}))
})"""


def panel_output(page: Any, title: str) -> Any:
    """The cell output holding the widget panel whose title includes `title`."""
    panel = page.locator(".jp-OutputArea-output", has=page.locator(".widget-slider")).filter(
        has=page.locator(".widget-html-content", has_text=title))
    panel.wait_for()
    # The charts are drawn by plotly once the widget's view is attached.
    panel.locator(".js-plotly-plot").first.wait_for()
    return panel


def read_panel(panel: Any) -> dict[str, Any]:
    return dict(panel.evaluate(READ_PANEL))


def drag_slider(page: Any, panel: Any, label: str, target: int) -> None:
    """Drag the handle of the slider labelled `label` to `target` with the mouse, and release."""
    slider = panel.locator(".widget-slider").filter(
        has=page.locator(".widget-label", has_text=re.compile(f"^{re.escape(label)}$")))
    handle = slider.get_by_role("slider")
    handle.scroll_into_view_if_needed()
    low, high, now = (float(handle.get_attribute(f"aria-value{key}") or "nan")
                      for key in ("min", "max", "now"))
    track = slider.locator(".noUi-base").bounding_box()
    grip = handle.bounding_box()
    assert track and grip, f"slider {label!r} is not visible"
    # noUiSlider moves the value by how far the pointer travels along the track.
    x, y = grip["x"] + grip["width"] / 2, grip["y"] + grip["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + track["width"] * (target - now) / (high - low), y, steps=10)
    page.mouse.up()
    moved = handle.get_attribute("aria-valuenow")
    assert moved is not None and float(moved) == target, (
        f"dragging {label!r} from {now:g} toward {target} left it at {moved}")


def wait_for_panel(page: Any, panel: Any, ready: Any, what: str,
                   timeout_s: float = MOVE_TIMEOUT_S) -> dict[str, Any]:
    """Poll the panel until `ready(state)` holds; the state it held in."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = read_panel(panel)
        if ready(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout_s:g} s; the panel shows "
                                 f"{json.dumps(state, indent=1)[:4000]}")
        page.wait_for_timeout(250)


def shares_chart(state: dict[str, Any]) -> tuple[int, dict[str, float], dict[str, float]]:
    """The weights panel's first chart: requests in the burst, observed and configured shares."""
    chart = state["charts"][0]
    counted = re.match(r"Share of (\d+) ", chart["title"])
    traces = {t["name"].split(" (")[0]: t for t in chart["traces"]}
    if not counted or {"observed share", "configured weight"} - set(traces):
        return 0, {}, {}
    observed, configured = traces["observed share"], traces["configured weight"]
    return (int(counted.group(1)), dict(zip(observed["x"], observed["y"], strict=True)),
            dict(zip(configured["x"], configured["y"], strict=True)))


def slider_weights(state: dict[str, Any]) -> dict[str, int]:
    """The weights sliders' values by subset ("v1 (%)" is subset v1)."""
    return {label.removesuffix(" (%)"): int(value) for label, value in state["sliders"].items()}


def shows_its_weights(state: dict[str, Any]) -> bool:
    """Whether the shares chart's markers are the weights the sliders show."""
    _, _, configured = shares_chart(state)
    return bool(configured) and all(abs(configured.get(s, 0.0) - w / 100) < 1e-9
                                    for s, w in slider_weights(state).items())


def move_weight_and_check(page: Any, panel: Any, subset: str, target: int) -> dict[str, Any]:
    """Drag one weight slider; wait for the burst drawn for the new weights; check the shares."""
    before = slider_weights(wait_for_panel(page, panel, shows_its_weights, CHART_DRAWN))
    expected = widgets.rebalance(before, subset, target)
    assert expected != before, f"moving {subset} to {target} would change nothing: {before}"
    drag_slider(page, panel, f"{subset} (%)", target)

    applied = "Applied .*: " + ", ".join(f"{s} {w}%" for s, w in expected.items()) + r"\. Sent"

    def redrawn(state: dict[str, Any]) -> bool:
        # The panel applied the config, sent the burst, then drew it and said so.
        return (slider_weights(state) == expected and shows_its_weights(state)
                and any(re.match(applied, line) for line in state["status"]))

    state = wait_for_panel(page, panel, redrawn,
                           f"the chart redrawn for the weights {expected} after the drag")
    n, observed, _ = shares_chart(state)
    # Istio promises: each request picks a subset at random with the configured weights; over
    # n requests each share lies within 4 binomial standard errors (plus one request).
    for name, weight in expected.items():
        share, bound = observed.get(name, 0.0), traffic.binomial_bound(weight / 100, n)
        assert abs(share - weight / 100) <= bound, (
            f"{name}: observed {share:.1%} of {n}, configured {weight}% (± {bound:.1%}); "
            f"all observed: {observed}")
    return state


def save_screenshot(panel: Any, name: str) -> Path:
    """A screenshot of the panel in tests/artifacts/browser/, its path printed."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    panel.page.mouse.move(0, 0)  # no hover labels or plotly toolbar in the picture
    panel.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


# --- The tests -------------------------------------------------------------------------------


def test_traffic_shifting_chart_follows_the_dragged_weight(page: Any, lab: Lab) -> None:
    open_notebook(page, lab, "04_traffic_shifting.ipynb")
    run_all(page)
    panel = panel_output(page, "Weights of the reviews VirtualService")
    # Run All leaves v1 20 / v3 80; v2 to 50 gives a split the notebook never set.
    move_weight_and_check(page, panel, "v2", 50)
    save_screenshot(panel, "04_traffic_shifting")


def test_tcp_traffic_shifting_chart_follows_the_dragged_weight(page: Any, lab: Lab) -> None:
    open_notebook(page, lab, "06_tcp_traffic_shifting.ipynb")
    run_all(page)
    panel = panel_output(page, "Weights of the tcp-echo VirtualService")
    # Run All leaves 50/50; 80% of new connections to v2.
    move_weight_and_check(page, panel, "v2", 80)
    save_screenshot(panel, "06_tcp_traffic_shifting")


def test_breaker_refuses_more_as_the_dragged_concurrency_grows(page: Any, lab: Lab) -> None:
    open_notebook(page, lab, "07_circuit_breaking.ipynb")
    run_all(page)
    panel = panel_output(page, "Share of 503 responses by concurrency")
    state = wait_for_panel(page, panel, lambda s: bool(breaker_bars(s)), CHART_DRAWN)
    start = int(next(iter(state["sliders"].values())))
    # Each drag must change the value, or no load runs: Run All leaves the slider at 8.
    shares: dict[int, float] = {}
    for connections in ([1, 8] if start != 1 else [8, 1]):
        drag_slider(page, panel, "concurrent connections", connections)
        state = wait_for_panel(page, panel, lambda s, c=connections: breaker_run(s, c) is not None,
                               f"the result of a load run with {connections} connection(s)")
        requests, refused = breaker_run(state, connections) or (0, 0)
        bars = breaker_bars(state)
        # The bar for this concurrency is the run the drag started, as the status line says.
        assert abs(bars.get(connections, -1.0) - refused / requests) < 1e-9, (bars, state)
        shares[connections] = refused / requests
    save_screenshot(panel, "07_circuit_breaking")
    # Istio promises: one request at a time stays within the pool (one connection, one
    # pending), so nearly all succeed; eight at a time overflow it and the sidecar answers 503.
    assert shares[1] <= 0.1, shares
    assert shares[8] >= shares[1] + 0.2, shares


def breaker_run(state: dict[str, Any], connections: int) -> tuple[int, int] | None:
    """(requests, 503s) from the status line, once it reports a run with `connections`."""
    for line in state["status"]:
        done = re.match(rf"{connections} connection\(s\): (\d+) requests \((.*?)\);", line)
        if done:
            codes = dict(re.findall(r"(-?\d+): (\d+)", done.group(2)))
            return int(done.group(1)), int(codes.get("503", 0))
    return None


def breaker_bars(state: dict[str, Any]) -> dict[int, float]:
    """The breaker chart's bars: the share of 503 by concurrency."""
    traces = state["charts"][0]["traces"] if state["charts"] else []
    if not traces:
        return {}
    bars = traces[0]
    return {int(x): float(y) for x, y in zip(bars["x"], bars["y"], strict=True)}
