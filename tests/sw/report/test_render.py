"""Rendering the report: missing inputs become notes, old plots go, other files stay,
and the page renders in headless Chromium with every plot visible
(:mod:`velcro.sw.report.render`)."""

import html
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from velcro.sw.report.plots import PLOT_FILES

ALL_PLOTS = {"velcro", "vq", "cycles", "resources"}


def test_missing_inputs_become_notes_and_their_old_plots_go(results, full_report, tmp_path,
                                                           copy_results, run_report,
                                                           page_tables, find_row):
    out = tmp_path / "report"
    shutil.copytree(full_report[0], out)
    some = copy_results(results, tmp_path / "some", ["bench_hw.json", "velcro_table.json"])
    code, stdout, _ = run_report(["--results", some, "--out", out])
    assert code == 0
    lines = stdout.splitlines()
    assert lines[0].endswith(f"run: velcro demo --out {some}")
    assert lines[1].endswith(f"run: velcro vq --sweep --out {some}")
    assert lines[2].endswith(f"run: velcro deepcompress --out {some}")
    assert re.fullmatch(rf"rendered +Cycles per conv layer with and without VELCRO +"
                        rf"{re.escape(str(some / 'bench_hw.json'))}", lines[3])
    assert lines[4].endswith(f"run: velcro build estimate --json {some / 'estimate.json'}")
    assert lines[5].startswith("rendered      Other hardware figures")
    # The four of the missing files, and no compress or run record.
    assert sum(line.startswith("not measured") for line in lines) == 6
    assert lines[-1].endswith("and 1 plot")
    page = (out / "index.html").read_text()
    assert page.count('class="plot"') == 1 and 'id="plot-cycles"' in page
    assert (f'<p class="missing">Not measured — run <code>velcro build estimate --json '
            f'{some / "estimate.json"}</code>.</p>') in page
    assert f"> Not measured — run `velcro demo --out {some}`." in (out / "report.md").read_text()
    assert sorted(p.name for p in out.glob("*.png")) == [PLOT_FILES["cycles"]]
    status = page_tables(out)["Sections"]
    assert find_row(status, "Cycles per conv layer with and without VELCRO")[1:] == [
        "rendered", str(some / "bench_hw.json")]
    assert find_row(status, "Deep Compression")[1:] == [
        "not measured", f"run velcro deepcompress --out {some}"]


def test_a_report_into_the_results_folder_leaves_their_files(results, tmp_path, copy_results,
                                                            run_report):
    folder = copy_results(results, tmp_path / "demo", ["bench_hw.json"])
    theirs = {"vq_sweep.png": b"sweep", "velcro_accuracy_vs_C.png": b"curves",
              "bench_hw.json": (folder / "bench_hw.json").read_bytes()}
    for name, content in theirs.items():
        (folder / name).write_bytes(content)
    assert run_report(["--results", folder, "--out", folder])[0] == 0
    assert {name: (folder / name).read_bytes() for name in theirs} == theirs
    assert (folder / PLOT_FILES["cycles"]).is_file() and (folder / "index.html").is_file()


PROBE = """<script>
window.addEventListener("load", () => {
  const boxes = [...document.querySelectorAll("figure.plot")].map(figure => {
    const img = figure.querySelector("img"), r = img.getBoundingClientRect();
    return {id: figure.id, x: r.left + scrollX, y: r.top + scrollY, width: r.width,
            height: r.height, loaded: img.complete && img.naturalWidth > 0};
  });
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({height: document.documentElement.scrollHeight, boxes});
  document.body.appendChild(probe);
});
</script>"""


def _chromium(*args: str) -> subprocess.CompletedProcess:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("headless Chromium is needed to check the report page: "
                    "apt-get install chromium")
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--force-device-scale-factor=1", *args],
                          capture_output=True, text=True, timeout=120, check=True)


def test_the_page_renders_in_chromium_with_every_plot_visible(full_report, tmp_path, non_blank):
    """Chromium loads the page with a probe script that reports where each plot image
    sits, and screenshots it; every plot's region of the screenshot must show a loaded,
    non-blank image."""
    out = tmp_path / "report"
    shutil.copytree(full_report[0], out)
    page = (out / "index.html").read_text()
    (out / "probe.html").write_text(page.replace("</body>", PROBE + "</body>"))
    shot = tmp_path / "page.png"
    width, height = 1200, 6000
    dom = _chromium(f"--window-size={width},{height}", "--dump-dom", f"--screenshot={shot}",
                    (out / "probe.html").as_uri()).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom)
    assert found, "the probe script did not run"
    probe = json.loads(html.unescape(found.group(1)))
    assert probe["height"] <= height, "the page is taller than the screenshot"
    boxes = {box["id"].removeprefix("plot-"): box for box in probe["boxes"]}
    assert set(boxes) == ALL_PLOTS

    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (height, width)
    for key, box in boxes.items():
        assert box["loaded"], f"plot {key} did not load"
        assert box["width"] > 500 and box["height"] > 150, f"plot {key} is too small: {box}"
        x, y = round(box["x"]), round(box["y"])
        region = pixels[y:y + round(box["height"]), x:x + round(box["width"])]
        assert non_blank(region), f"plot {key} is blank in the screenshot"
    # The page outside the plots is mostly the white background: the check can fail.
    assert not non_blank(pixels[:, :30])
