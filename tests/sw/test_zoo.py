"""The model zoo: ``velcro zoo train|list``, checkpoints, resuming, and ``load_network``
of a zoo network, on a few dozen images (``--images``, ``--eval-images``)."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from velcro.sw import zoo
from velcro.sw.cli import main
from velcro.sw.data import load_fashion_mnist, resize_images
from velcro.sw.errors import ModelError
from velcro.sw.evaluate import accuracy, logits
from velcro.sw.models import load_network, reference_record, torchvision_model

# One torch thread: on a loaded 2-core machine two spin-waiting threads are ~10x slower.
QUICK = ["--images", "64", "--eval-images", "32", "--threads", "1"]


def one_line(capsys, pattern: str) -> str:
    """The error's message: one line on stderr after any progress lines, matching
    ``pattern``."""
    err = capsys.readouterr().err.strip().splitlines()
    assert err and all(line.startswith("[velcro] ") for line in err[:-1]), err
    assert err[-1].startswith("velcro: error: ") and pattern in err[-1], err[-1]
    return err[-1]


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A home with resnet18 trained 1 epoch on 64 images; tests use copies of it."""
    home = tmp_path_factory.mktemp("zoo-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VELCRO_HOME", str(home))
        assert main(["zoo", "train", "resnet18", "--epochs", "1", *QUICK]) == 0
    return home


@pytest.fixture
def home(trained, tmp_path, monkeypatch):
    copy = tmp_path / "home"
    shutil.copytree(trained, copy)
    monkeypatch.setenv("VELCRO_HOME", str(copy))
    return copy


def test_train_writes_weights_record_and_a_checkpoint(home):
    record = json.loads((home / "zoo" / "resnet18.json").read_text())
    assert record["name"] == "resnet18" and record["image_size"] == [64, 64]
    assert record["epochs"] == 1 and record["train_images"] == 64
    assert record["heldout_images"] == record["test_images"] == 32
    assert record["torch_threads"] == 1 and record["train_seconds"] > 0
    assert len(record["history"]) == 1 and record["history"][0]["images_per_second"] > 0
    checkpoint = json.loads((home / "zoo" / "checkpoints" / "resnet18.json").read_text())
    assert checkpoint["epoch"] == 1 and checkpoint["seed"] == 0
    assert checkpoint["settings"]["batch_size"] == 64 and checkpoint["history"] == record["history"]
    state = load_file(str(home / "zoo" / "checkpoints" / checkpoint["last"]["file"]))
    assert any(k.startswith("optimizer.") and k.endswith(".exp_avg") for k in state)
    # The final weights are the checkpoint's, the test accuracy theirs on the test images.
    final = load_file(str(home / "zoo" / "resnet18.safetensors"))
    assert all(torch.equal(v, state[f"model.{k}"]) for k, v in final.items())
    test = load_fashion_mnist("test")
    model = load_network("resnet18")
    assert record["test_accuracy"] == accuracy(model, resize_images(test.images[:32], (64, 64)),
                                               test.labels[:32])
    assert reference_record("resnet18") == record


def test_load_network_gives_the_saved_weights_logits(home):
    model = load_network("resnet18")
    same = torchvision_model("resnet18")
    same.load_state_dict(load_file(str(home / "zoo" / "resnet18.safetensors")))
    images = resize_images(load_fashion_mnist("test").images[:8], (64, 64))
    assert torch.equal(logits(model, images), logits(same.eval(), images))
    assert not torch.equal(logits(model, images), logits(torchvision_model("resnet18"), images))


def test_progress_line_per_epoch_and_another_network(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VELCRO_HOME", str(tmp_path))
    threads = torch.get_num_threads()
    assert main(["zoo", "train", "googlenet", "--epochs", "1", "--images", "32",
                 "--eval-images", "16", "--threads", "1"]) == 0
    assert torch.get_num_threads() == threads  # --threads holds for the run only
    err = capsys.readouterr().err
    assert "[velcro] googlenet epoch 1/1: loss " in err and "images/s" in err and "ETA" in err
    model = load_network("googlenet")
    assert reference_record("googlenet")["history"][0]["epoch"] == 1
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 10)


def test_list_json_names_every_network_with_its_figures(home, tmp_path, capsys):
    out = tmp_path / "list.json"
    assert main(["zoo", "list", "--json", str(out)]) == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"resnet18", "googlenet", "mobilenet_v2"}
    record = json.loads((home / "zoo" / "resnet18.json").read_text())
    assert rows["resnet18"] == {"name": "resnet18", "cached": True, "epochs": 1,
                                "heldout_accuracy": record["heldout_accuracy"],
                                "test_accuracy": record["test_accuracy"],
                                "image_size": [64, 64],
                                "path": str(home / "zoo" / "resnet18.safetensors")}
    assert not rows["googlenet"]["cached"] and rows["googlenet"]["epochs"] is None
    text = capsys.readouterr().out
    assert "not cached" in text and f"{100 * record['test_accuracy']:.2f}%" in text


def state_of(home, name, epoch):
    return load_file(str(home / "zoo" / "checkpoints" / f"{name}-epoch{epoch}.safetensors"))


def test_resuming_gives_the_weights_of_a_straight_run(tmp_path, monkeypatch, capsys):
    """mobilenet_v2 has dropout: its random draws must also be a function of the epoch."""
    args = ["zoo", "train", "mobilenet_v2", "--images", "24", "--eval-images", "8",
            "--batch-size", "12", "--threads", "1"]
    monkeypatch.setenv("VELCRO_HOME", str(tmp_path / "a"))
    assert main([*args, "--epochs", "1"]) == 0
    first = state_of(tmp_path / "a", "mobilenet_v2", 1)
    assert main([*args, "--epochs", "2"]) == 0
    assert "resuming at epoch 2/2" in capsys.readouterr().err
    monkeypatch.setenv("VELCRO_HOME", str(tmp_path / "b"))
    assert main([*args, "--epochs", "2"]) == 0
    resumed, straight = state_of(tmp_path / "a", "mobilenet_v2", 2), \
        state_of(tmp_path / "b", "mobilenet_v2", 2)
    assert resumed.keys() == straight.keys() and any(k.startswith("optimizer.") for k in resumed)
    assert all(torch.equal(resumed[k], straight[k]) for k in resumed)
    assert not all(torch.equal(first[k], resumed[k]) for k in first)
    records = [json.loads((tmp_path / h / "zoo" / "mobilenet_v2.json").read_text())
               for h in ("a", "b")]
    assert [h["loss"] for h in records[0]["history"]] == [h["loss"] for h in records[1]["history"]]
    assert records[0]["weights_sha256"] == records[1]["weights_sha256"]
    # A resume with other settings, or past its epochs, is refused and writes nothing.
    before = snapshot(tmp_path / "b")
    assert main([*args, "--epochs", "3", "--seed", "1"]) == 2
    one_line(capsys, "checkpoints/mobilenet_v2.json: the checkpoint was made with seed 0")
    assert main([*args, "--epochs", "1"]) == 2
    one_line(capsys, "is at epoch 2, past --epochs 1")
    assert snapshot(tmp_path / "b") == before


@pytest.mark.parametrize("target", ["checkpoints/resnet18-epoch1.safetensors",
                                    "checkpoints/resnet18.json"])
def test_a_corrupt_checkpoint_is_named_and_nothing_is_lost(home, capsys, target):
    path = home / "zoo" / target
    path.write_bytes(path.read_bytes()[:100])
    before = snapshot(home)
    assert main(["zoo", "train", "resnet18", "--epochs", "2", *QUICK]) == 2
    one_line(capsys, str(path))
    assert snapshot(home) == before


def test_a_checkpoint_of_another_network_is_refused(home, capsys):
    folder = home / "zoo" / "checkpoints"
    shutil.copy(folder / "resnet18.json", folder / "googlenet.json")
    assert main(["zoo", "train", "googlenet", "--epochs", "2", *QUICK]) == 2
    one_line(capsys, f"{folder / 'googlenet.json'}: checkpoint of 'resnet18', not of "
             "'googlenet'")


@pytest.mark.parametrize("change", [{"seconds": "soon"}, {"best": {"epoch": 7}},
                                    {"history": []}, {"settings": None}, {"version": 9}])
def test_a_checkpoint_record_of_the_wrong_shape_is_named(home, capsys, change):
    path = home / "zoo" / "checkpoints" / "resnet18.json"
    record = json.loads(path.read_text())
    if "best" in change:
        change = {"best": {**record["best"], **change["best"]}}
    path.write_text(json.dumps({**record, **change}))
    assert main(["zoo", "train", "resnet18", "--epochs", "2", *QUICK]) == 2
    one_line(capsys, str(path))


def test_a_checkpoint_file_of_another_network_is_refused(home, capsys):
    """Its record is consistent (name, settings, sha256), its tensors are resnet18's."""
    folder = home / "zoo" / "checkpoints"
    record = json.loads((folder / "resnet18.json").read_text())
    shutil.copy(folder / "resnet18-epoch1.safetensors", folder / "googlenet-epoch1.safetensors")
    entry = {"epoch": 1, "file": "googlenet-epoch1.safetensors",
             "sha256": record["last"]["sha256"]}
    (folder / "googlenet.json").write_text(json.dumps(
        {**record, "name": "googlenet", "last": entry, "best": entry}))
    assert main(["zoo", "train", "googlenet", "--epochs", "2", *QUICK]) == 2
    one_line(capsys, f"{folder / 'googlenet-epoch1.safetensors'}: the checkpoint does not "
             "fit the network")


@pytest.mark.parametrize("drop", ["model.fc.bias", "optimizer.0.step"])
def test_a_checkpoint_missing_a_tensor_is_refused(home, capsys, drop):
    from safetensors.torch import save_file

    folder = home / "zoo" / "checkpoints"
    state = load_file(str(folder / "resnet18-epoch1.safetensors"))
    del state[drop]
    save_file(state, str(folder / "resnet18-epoch1.safetensors"))
    record = json.loads((folder / "resnet18.json").read_text())
    for key in ("last", "best"):
        record[key]["sha256"] = zoo._sha256(folder / "resnet18-epoch1.safetensors")
    (folder / "resnet18.json").write_text(json.dumps(record))
    assert main(["zoo", "train", "resnet18", "--epochs", "2", *QUICK]) == 2
    one_line(capsys, f"{folder / 'resnet18-epoch1.safetensors'}: ")


def test_an_interrupted_epoch_leaves_the_last_checkpoint_to_resume(home, monkeypatch, capsys):
    folder = home / "zoo" / "checkpoints"
    before = snapshot(home)
    calls = []

    def interrupted(*args):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo, "accuracy", interrupted)
    assert main(["zoo", "train", "resnet18", "--epochs", "2", *QUICK]) == 130
    assert calls and snapshot(home) == before
    monkeypatch.undo()
    monkeypatch.setenv("VELCRO_HOME", str(home))
    assert main(["zoo", "train", "resnet18", "--epochs", "2", *QUICK]) == 0
    assert "resuming at epoch 2/2" in capsys.readouterr().err
    record = json.loads((folder / "resnet18.json").read_text())
    assert record["epoch"] == 2 and [h["epoch"] for h in record["history"]] == [1, 2]
    assert {p.name for p in folder.iterdir()} <= {
        "resnet18.json", "resnet18-epoch1.safetensors", "resnet18-epoch2.safetensors"}


def test_fresh_ignores_a_corrupt_checkpoint(home):
    (home / "zoo" / "checkpoints" / "resnet18.json").write_text("{not json")
    assert main(["zoo", "train", "resnet18", "--epochs", "1", "--fresh", *QUICK]) == 0
    assert json.loads((home / "zoo" / "checkpoints" / "resnet18.json").read_text())["epoch"] == 1


@pytest.mark.parametrize("damage", ["truncate", "image_size", "accuracy"])
def test_a_corrupt_record_is_named_by_list_and_load_network(home, capsys, damage):
    path = home / "zoo" / "resnet18.json"
    record = json.loads(path.read_text())
    if damage == "truncate":
        path.write_text(path.read_text()[:40])
    else:
        record.update(image_size="64x64") if damage == "image_size" \
            else record.update(test_accuracy=1.5)
        path.write_text(json.dumps(record))
    assert main(["zoo", "list"]) == 2
    one_line(capsys, str(path))
    with pytest.raises(ModelError, match=str(path)):
        load_network("resnet18")


def test_weights_not_matching_their_record_are_refused(home):
    weights = home / "zoo" / "resnet18.safetensors"
    state = load_file(str(weights))
    state["fc.bias"] = state["fc.bias"] + 1
    from safetensors.torch import save_file

    save_file(state, str(weights))
    with pytest.raises(ModelError, match="do not match their record"):
        load_network("resnet18")


def test_a_missing_zoo_network_says_how_to_train_it(tmp_path, monkeypatch):
    monkeypatch.setenv("VELCRO_HOME", str(tmp_path))
    with pytest.raises(ModelError, match="run 'velcro zoo train mobilenet_v2'"):
        load_network("mobilenet_v2")


@pytest.mark.parametrize("argv, message", [
    (["zoo", "train", "vgg16"], "unknown zoo network 'vgg16'"),
    (["zoo", "train", "resnet18", "--epochs", "0"], "--epochs must be at least 1, not 0"),
    (["zoo", "train", "resnet18", "--epochs", "-3"], "--epochs must be at least 1, not -3"),
    (["zoo", "train", "resnet18", "--images", "0"], "--images must be in [1, 50000]"),
    (["zoo", "train", "resnet18", "--threads", "0"], "--threads must be at least 1"),
])
def test_bad_arguments_fail_on_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.setenv("VELCRO_HOME", str(tmp_path))
    assert main(argv) == 2
    one_line(capsys, message)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_zoo_folder_fails_before_training(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "home"
    blocker.write_text("a file, not a folder")
    monkeypatch.setenv("VELCRO_HOME", str(blocker))
    assert main(["zoo", "train", "resnet18", *QUICK]) == 2
    one_line(capsys, "the zoo folder is not writable")
    assert blocker.read_text() == "a file, not a folder"


def test_table1_feeds_a_zoo_network_images_at_its_recorded_size(home, monkeypatch):
    from velcro.sw.locality import table1

    path = home / "zoo" / "resnet18.json"
    record = json.loads(path.read_text())
    assert table1.input_size("resnet18") == (64, 64)
    path.write_text(json.dumps({**record, "image_size": [48, 40]}))
    assert table1.input_size("resnet18") == (48, 40)
    asked = []

    class Stop(Exception):
        pass

    def make_task(name, size=None):
        asked.append((name, size))
        raise Stop

    monkeypatch.setattr(table1, "make_task", make_task)
    with pytest.raises(Stop):
        table1.table1_cell("resnet18", None, "footwear")
    assert asked == [("footwear", (48, 40))]
    assert table1.input_size("reference") is None
    monkeypatch.setenv("VELCRO_HOME", str(home / "nothing"))
    assert table1.input_size("googlenet") == (64, 64)


def test_learning_rate_depends_on_the_epoch_not_on_the_total():
    rates = [zoo.learning_rate(1e-3, e, s, 10) for e in range(3) for s in range(10)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert rates[10] == pytest.approx(0.7e-3) and rates[20] == pytest.approx(0.49e-3)
    assert np.all(np.diff(rates[10:]) <= 0)


def test_each_epoch_has_its_own_batch_order_a_function_of_seed_and_epoch():
    orders = [zoo.epoch_order(0, e, 1000) for e in range(3)]
    assert all(sorted(o) == list(range(1000)) for o in orders)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    assert np.array_equal(orders[1], zoo.epoch_order(0, 1, 1000))
    assert not np.array_equal(orders[1], zoo.epoch_order(1, 1, 1000))
