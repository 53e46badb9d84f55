import json

from velcro.sw.cli import main
from velcro.sw.data import make_task
from velcro.sw.export import export
from velcro.sw.golden import GoldenModel
from velcro.sw.models import load_reference


def test_bench_golden_rejects_a_package_not_fitting_the_images(tiny_package_bytes, tmp_path,
                                                               capsys):
    package = tmp_path / "tiny.velcro"
    package.write_bytes(tiny_package_bytes)
    assert main(["bench", "golden", "--package", str(package)]) == 2
    assert "the package expects [1, 6, 6]" in capsys.readouterr().err


def test_bench_golden_on_the_reference_package(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "golden", "--images", "64", "--repeats", "1", "--json",
                 str(out)]) == 0
    printed = capsys.readouterr().out
    assert "images_per_s" in printed
    record = json.loads(out.read_text())
    assert record["images"] == 64 and record["images_per_s"] > 0
    package = export(load_reference(), make_task("footwear"), [20, 30, 30, 20])
    per_image = GoldenModel(package).per_image()
    assert record["macs_per_image"] == sum(c.macs for c in per_image)
    assert record["macs_skipped_per_image"] == sum(c.skipped for c in per_image)
