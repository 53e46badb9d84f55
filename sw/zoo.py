"""The model zoo: torchvision's networks trained on Fashion-MNIST, cached in the user folder.

``velcro zoo train NAME`` trains :func:`~velcro.sw.models.torchvision_model` ``NAME``
(one input channel, ten classes) on the 50,000 ``fit`` images resized bilinearly from
28x28 to 64x64 (:func:`~velcro.sw.data.resize_images`); the epoch whose held-out
accuracy is highest gives the final weights, measured once on the test images. The zoo
is ``<user folder>/zoo`` (:func:`~velcro.sw.models.user_folder`, ``$VELCRO_HOME``):

- ``<name>.safetensors``: the final float32 weights, and ``<name>.json``: their record
  (held-out and test accuracy, epochs, images, image size, seconds, torch threads);
- ``checkpoints/<name>.json`` and ``checkpoints/<name>-epoch<k>.safetensors``: after
  every epoch the weights and AdamW state (the last epoch's, and the best one's), and
  the epoch, seed, hyper-parameters and per-epoch loss and held-out accuracy.

Training is a function of the seed: the initial weights come from ``seed``, and the
batch order and dropout of epoch ``e`` from ``(seed, e)``; the learning rate of a step
depends on its epoch and step only, never on the total of epochs. So a run resumed
from its checkpoint, or extended with more ``--epochs``, gives the weights a straight
run does, bit for bit (the same torch threads on the same machine).

Files are data, never code: records are parsed as JSON and checked, tensors are
safetensors, and every file is written atomically (:mod:`velcro.sw.files`) before the
one naming it, so an interrupted run leaves the previous checkpoint whole.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import load_fashion_mnist, resize_images, to_float
from .errors import ModelError, OutputError, PlanError
from .evaluate import accuracy
from .files import write_bytes, write_json
from .models import TORCHVISION, load_weights, torchvision_model, user_folder
from .progress import progress as progress_bar

#: The zoo's networks, and the input side they are trained at.
NAMES = TORCHVISION
IMAGE_SIZE = (64, 64)
EPOCHS, BATCH_SIZE, LR, WEIGHT_DECAY = 5, 64, 1e-3, 0.05
#: The learning rate of epoch ``e`` (from 0) is ``lr * LR_DECAY ** e``; the first
#: ``WARMUP`` steps of epoch 0 ramp it up linearly.
LR_DECAY, WARMUP = 0.7, 100
RECORD_FORMAT, CHECKPOINT_FORMAT, VERSION = "velcro-zoo", "velcro-zoo-checkpoint", 1


def zoo_folder() -> Path:
    """``<user folder>/zoo``: the trained networks and their checkpoints."""
    return user_folder() / "zoo"


def weights_path(name: str) -> Path:
    return zoo_folder() / f"{name}.safetensors"


def record_path(name: str) -> Path:
    return zoo_folder() / f"{name}.json"


def checkpoint_path(name: str) -> Path:
    return zoo_folder() / "checkpoints" / f"{name}.json"


def check_name(name: str) -> str:
    if name not in NAMES:
        raise ModelError(f"unknown zoo network {name!r}; choose one of {', '.join(NAMES)}")
    return name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path, fmt: str) -> dict:
    """The JSON object of ``path`` with ``format`` ``fmt`` and version :data:`VERSION`."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelError(f"{path}: not a readable {fmt} record ({type(e).__name__}: "
                         f"{e}); delete it or retrain") from None
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise ModelError(f"{path}: not a {fmt} record; delete it or retrain")
    if record.get("version") != VERSION:
        raise ModelError(f"{path}: {fmt} version {record.get('version')!r} is not supported "
                         f"(expected {VERSION})")
    return record


def _field(record: dict, key: str, kind, path: Path):
    value = record.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        what = "number" if isinstance(kind, tuple) else kind.__name__
        raise ModelError(f"{path}: field {key!r} is missing or not a {what}")
    return value


def zoo_record(name: str) -> dict:
    """The record of the zoo's trained ``name`` (``zoo/<name>.json``), checked: its
    ``image_size`` is ``[H, W]``, its accuracies numbers in [0, 1]."""
    path = record_path(check_name(name))
    if not path.is_file():
        raise ModelError(f"zoo network {name} is not trained ({path} is missing); "
                         f"run 'velcro zoo train {name}'")
    record = _read_json(path, RECORD_FORMAT)
    if record.get("name") != name:
        raise ModelError(f"{path}: record of {record.get('name')!r}, not of {name!r}")
    size = record.get("image_size")
    if not (isinstance(size, list) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and 16 <= v <= 4096
                    for v in size)):
        raise ModelError(f"{path}: image_size must be [H, W] (16..4096), not {size!r}")
    for key in ("heldout_accuracy", "test_accuracy"):
        value = _field(record, key, (int, float), path)
        if not 0 <= value <= 1:
            raise ModelError(f"{path}: {key} {value!r} is not in [0, 1]")
    for key in ("epochs", "train_images"):
        if _field(record, key, int, path) < 1:
            raise ModelError(f"{path}: {key} must be positive")
    _field(record, "weights_sha256", str, path)
    return record


def load_zoo_network(name: str) -> nn.Module:
    """``torchvision_model(name)`` with the zoo's trained weights, in eval mode."""
    path = weights_path(check_name(name))
    if not path.is_file():
        raise ModelError(f"zoo weights {path} are missing; run 'velcro zoo train {name}'")
    record = zoo_record(name)
    if _sha256(path) != record["weights_sha256"]:
        raise ModelError(f"{path}: weights do not match their record {record_path(name)} "
                         f"(sha256); run 'velcro zoo train {name} --fresh'")
    return load_weights(torchvision_model(name), path)


def zoo_listing() -> list[dict]:
    """Every zoo name with whether it is trained (``cached``), its epochs, held-out and
    test accuracy, image size and weights path; a broken record stops the listing."""
    rows = []
    for name in NAMES:
        row = {"name": name, "cached": False, "epochs": None, "heldout_accuracy": None,
               "test_accuracy": None, "image_size": None, "path": str(weights_path(name))}
        if weights_path(name).is_file() or record_path(name).is_file():
            record = zoo_record(name)
            if not weights_path(name).is_file():
                raise ModelError(f"{weights_path(name)} is missing beside its record "
                                 f"{record_path(name)}; run 'velcro zoo train {name}'")
            row.update(cached=True, epochs=record["epochs"], image_size=record["image_size"],
                       heldout_accuracy=record["heldout_accuracy"],
                       test_accuracy=record["test_accuracy"])
        rows.append(row)
    return rows


# --- training ------------------------------------------------------------------------

def learning_rate(lr: float, epoch: int, step: int, steps: int) -> float:
    """The rate of ``step`` (from 0) of ``epoch`` (from 0); ``steps`` per epoch."""
    warm = min((step + 1) / min(WARMUP, steps), 1.0) if epoch == 0 else 1.0
    return lr * LR_DECAY ** epoch * warm


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the ``n`` training images in ``epoch``: a function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.default_rng([seed, epoch]).integers(1 << 62))


def check_writable(folder: Path) -> None:
    """Create ``folder`` and write a file in it, or raise an :class:`OutputError`
    naming it, before any training starts."""
    probe = folder / ".velcro-zoo-probe.velcro-tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"{folder}: the zoo folder is not writable "
                          f"({e.strerror or type(e).__name__})") from None


def _pick(count: int, n: int | None, what: str) -> int:
    if n is None:
        return count
    if not 1 <= n <= count:
        raise PlanError(f"{what} must be in [1, {count}], not {n}")
    return n


def _state_tensors(model: nn.Module, optimizer) -> dict[str, torch.Tensor]:
    tensors = {f"model.{k}": v.detach().clone().contiguous()
               for k, v in model.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).clone().contiguous()
    return tensors


def _load_state(path: Path, model: nn.Module, optimizer) -> None:
    """Model and AdamW state from the checkpoint file ``path``; anything that does not
    fit is a :class:`ModelError` naming it."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises several types for a corrupt file
        raise ModelError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e}); "
                         "pass --fresh to start over") from None
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_state)
    except RuntimeError as e:
        first = " ".join(str(e).strip().splitlines()[:2])
        raise ModelError(f"{path}: the checkpoint does not fit the network ({first}); "
                         "pass --fresh to start over") from None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        match = re.fullmatch(r"optimizer\.(\d+)\.(step|exp_avg|exp_avg_sq)", key)
        if key.startswith("model."):
            continue
        if match is None or int(match.group(1)) >= len(params):
            raise ModelError(f"{path}: unexpected tensor {key!r}; pass --fresh to start over")
        index, field = int(match.group(1)), match.group(2)
        if field != "step" and value.shape != params[index].shape:
            raise ModelError(f"{path}: {key} has shape {list(value.shape)}, the network "
                             f"{list(params[index].shape)}; pass --fresh to start over")
        if field == "step" and value.shape != ():
            raise ModelError(f"{path}: {key} is not a scalar; pass --fresh to start over")
        state.setdefault(index, {})[field] = value
    if any(len(fields) != 3 for fields in state.values()):
        raise ModelError(f"{path}: the optimizer state of a parameter is incomplete; pass "
                         "--fresh to start over")
    try:
        optimizer.load_state_dict({"state": state,
                                   "param_groups": optimizer.state_dict()["param_groups"]})
    except (RuntimeError, ValueError, KeyError) as e:
        first = " ".join(str(e).strip().splitlines()[:2])
        raise ModelError(f"{path}: the optimizer state does not fit the network ({first}); "
                         "pass --fresh to start over") from None


def read_checkpoint(name: str, settings: dict) -> dict | None:
    """The checked checkpoint record of ``name`` (None: there is none); it must have
    been made with ``settings`` (everything but the epochs)."""
    path = checkpoint_path(name)
    if not path.exists():
        return None
    record = _read_json(path, CHECKPOINT_FORMAT)
    if record.get("name") != name:
        raise ModelError(f"{path}: checkpoint of {record.get('name')!r}, not of {name!r}")
    made = _field(record, "settings", dict, path)
    for key, value in settings.items():
        if made.get(key) != value:
            raise ModelError(f"{path}: the checkpoint was made with {key} "
                             f"{made.get(key)!r}, not {value!r}; give the same options "
                             "or --fresh")
    epoch = _field(record, "epoch", int, path)
    history = _field(record, "history", list, path)
    if epoch < 1 or len(history) != epoch or not all(
            isinstance(h, dict) and isinstance(h.get("heldout_accuracy"), (int, float))
            for h in history):
        raise ModelError(f"{path}: epoch {epoch!r} does not match its history")
    for key in ("last", "best"):
        entry = _field(record, key, dict, path)
        file = entry.get("file")
        if not (isinstance(file, str) and re.fullmatch(rf"{re.escape(name)}-epoch\d+"
                                                      r"\.safetensors", file)):
            raise ModelError(f"{path}: {key} names no checkpoint file ({file!r})")
        tensors = path.parent / file
        if not tensors.is_file():
            raise ModelError(f"{tensors} (named by {path}) is missing; pass --fresh")
        if _sha256(tensors) != entry.get("sha256"):
            raise ModelError(f"{tensors}: does not match its checkpoint record {path} "
                             "(sha256); pass --fresh to start over")
    best = _field(record["best"], "epoch", int, path)
    if not 1 <= best <= epoch or _field(record["last"], "epoch", int, path) != epoch:
        raise ModelError(f"{path}: best epoch {best} or last epoch does not fit epoch {epoch}")
    if _field(record, "seconds", (int, float), path) < 0:
        raise ModelError(f"{path}: seconds must not be negative")
    return record


def _images(split: str, n: int | None, what: str) -> tuple[np.ndarray, np.ndarray]:
    data = load_fashion_mnist(split)
    n = _pick(len(data), n, what)
    return resize_images(data.images[:n], IMAGE_SIZE), data.labels[:n]


def train_zoo(name: str, epochs: int = EPOCHS, batch_size: int = BATCH_SIZE, lr: float = LR,
              seed: int = 0, images: int | None = None, eval_images: int | None = None,
              fresh: bool = False, progress: bool = True, threads: int | None = None) -> dict:
    """Train (or resume) the zoo's ``name`` to ``epochs`` epochs; write a checkpoint per
    epoch, then the final weights and record. Returns the record.

    ``images`` caps the ``fit`` images (a seeded choice), ``eval_images`` the held-out
    and test images (the first ones); ``fresh`` ignores an existing checkpoint;
    ``threads`` sets torch's threads for the run (default: torch's own).
    """
    if threads is not None and threads < 1:
        raise PlanError(f"--threads must be at least 1, not {threads}")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(name, epochs, batch_size, lr, seed, images, eval_images, fresh, progress)
    finally:
        torch.set_num_threads(previous)


def _train(name, epochs, batch_size, lr, seed, images, eval_images, fresh, progress) -> dict:
    check_name(name)
    if epochs < 1:
        raise PlanError(f"--epochs must be at least 1, not {epochs}")
    if batch_size < 1:
        raise PlanError(f"--batch-size must be at least 1, not {batch_size}")
    if not (math.isfinite(lr) and lr > 0):
        raise PlanError(f"--lr must be a positive number, not {lr}")
    fit = load_fashion_mnist("fit")
    n = _pick(len(fit), images, "--images")
    settings = {"seed": seed, "batch_size": batch_size, "lr": lr, "weight_decay": WEIGHT_DECAY,
                "lr_decay": LR_DECAY, "warmup_steps": WARMUP, "optimizer": "AdamW",
                "train_images": n, "eval_images": eval_images, "image_size": list(IMAGE_SIZE)}
    folder = zoo_folder()
    check_writable(folder / "checkpoints")
    checkpoint = None if fresh else read_checkpoint(name, settings)
    if checkpoint is not None and checkpoint["epoch"] > epochs:
        raise PlanError(f"{checkpoint_path(name)} is at epoch {checkpoint['epoch']}, past "
                        f"--epochs {epochs}; give --epochs {checkpoint['epoch']} or more, "
                        "or --fresh")
    pick = np.sort(np.random.default_rng(seed).permutation(len(fit))[:n])
    x_fit, y_fit = resize_images(fit.images[pick], IMAGE_SIZE), fit.labels[pick]
    x_held, y_held = _images("heldout", eval_images, "--eval-images")

    torch.manual_seed(seed)
    model = torchvision_model(name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    history, seconds, start_epoch = [], 0.0, 0
    if checkpoint is not None:
        _load_state(checkpoint_path(name).parent / checkpoint["last"]["file"], model, optimizer)
        history, start_epoch = checkpoint["history"], checkpoint["epoch"]
        seconds = float(checkpoint.get("seconds", 0.0))
        if checkpoint.get("torch_threads") != torch.get_num_threads():
            log(f"{name}: the checkpoint ran on {checkpoint.get('torch_threads')} torch "
                f"threads, this run on {torch.get_num_threads()}: the weights can differ "
                "from a straight run's in the last bits (--threads)")
        if start_epoch < epochs:
            log(f"{name}: resuming at epoch {start_epoch + 1}/{epochs} from "
                f"{checkpoint_path(name)}")
        else:
            log(f"{name}: {checkpoint_path(name)} has all {epochs} epochs; its best one "
                "becomes the final weights")
    steps = math.ceil(n / batch_size)
    loss_fn = nn.CrossEntropyLoss()
    run_seconds = []
    for epoch in range(start_epoch, epochs):
        began = time.perf_counter()
        torch.manual_seed(_epoch_seed(seed, epoch))
        order = epoch_order(seed, epoch, n)
        model.train()
        total = 0.0
        bar = progress_bar(range(steps), desc=f"{name} epoch {epoch + 1}/{epochs}",
                           unit="batch", enabled=progress)
        for step in bar:
            index = order[step * batch_size:(step + 1) * batch_size]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(lr, epoch, step, steps)
            optimizer.zero_grad()
            loss = loss_fn(model(to_float(x_fit[index])), torch.from_numpy(y_fit[index]))
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        train_seconds = time.perf_counter() - began
        held = accuracy(model, x_held, y_held)
        spent = time.perf_counter() - began
        seconds += spent
        run_seconds.append(spent)
        history.append({"epoch": epoch + 1, "loss": total / n, "heldout_accuracy": held,
                        "seconds": round(spent, 2),
                        "images_per_second": round(n / max(train_seconds, 1e-9), 1)})
        checkpoint = _write_checkpoint(name, model, optimizer, settings, history, seconds,
                                       checkpoint["best"] if checkpoint else None)
        eta = (epochs - epoch - 1) * float(np.mean(run_seconds))
        log(f"{name} epoch {epoch + 1}/{epochs}: loss {total / n:.4f}, held-out "
            f"{100 * held:.2f}%, {history[-1]['images_per_second']:.1f} images/s, "
            f"{spent:.1f} s, ETA {eta:.0f} s")
    return _finish(name, checkpoint, epochs, n, len(y_held), eval_images)


def log(text: str) -> None:
    import sys

    print(f"[velcro] {text}", file=sys.stderr, flush=True)


def _write_checkpoint(name, model, optimizer, settings, history, seconds, best) -> dict:
    """Write epoch ``len(history)``'s state, then the record naming it and the best
    epoch's file (``best``: the previous record's); remove the files it no longer names."""
    from safetensors.torch import save

    folder = checkpoint_path(name).parent
    epoch = len(history)
    file = f"{name}-epoch{epoch}.safetensors"
    write_bytes(folder / file, save(_state_tensors(model, optimizer)))
    last = {"epoch": epoch, "file": file, "sha256": _sha256(folder / file)}
    accuracies = [h["heldout_accuracy"] for h in history]
    if best is None or int(np.argmax(accuracies)) + 1 == epoch:
        best = last
    record = {"format": CHECKPOINT_FORMAT, "version": VERSION, "name": name, "epoch": epoch,
              "seed": settings["seed"], "settings": settings, "history": history,
              "seconds": round(seconds, 2), "torch_threads": torch.get_num_threads(),
              "last": last, "best": best}
    write_json(checkpoint_path(name), record)
    keep = {last["file"], best["file"]}
    for stale in folder.glob(f"{name}-epoch*.safetensors"):
        if stale.name not in keep:
            stale.unlink(missing_ok=True)
    return record


def _finish(name, checkpoint, epochs, n, n_held, eval_images) -> dict:
    """The best epoch's weights as ``zoo/<name>.safetensors``, measured on the test images,
    and the record beside them."""
    from safetensors.torch import load_file, save

    folder = checkpoint_path(name).parent
    best = checkpoint["best"]
    tensors = load_file(str(folder / best["file"]))
    state = {k[6:]: v.contiguous() for k, v in tensors.items() if k.startswith("model.")}
    write_bytes(weights_path(name), save(state))
    model = load_weights(torchvision_model(name), weights_path(name))
    x_test, y_test = _images("test", eval_images, "--eval-images")
    history = checkpoint["history"]
    record = {
        "format": RECORD_FORMAT, "version": VERSION, "name": name,
        "model": f"torchvision.models.{name}, one input channel, 10 classes",
        "dataset": "fashion-mnist", "input": "28x28 images resized bilinearly to 64x64, "
        "scaled to [0, 1]", "image_size": list(IMAGE_SIZE),
        "heldout_accuracy": history[best["epoch"] - 1]["heldout_accuracy"],
        "heldout_images": n_held,
        "test_accuracy": accuracy(model, x_test, y_test), "test_images": len(y_test),
        "best_epoch": best["epoch"], "epochs": epochs, "train_images": n,
        "seed": checkpoint["seed"],
        "settings": checkpoint["settings"], "history": history,
        "train_seconds": checkpoint["seconds"], "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "weights_sha256": _sha256(weights_path(name)),
    }
    write_json(record_path(name), record)
    return record
