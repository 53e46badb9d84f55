"""``velcro zoo train|list``: torchvision's networks trained on Fashion-MNIST and cached in
the user folder (:mod:`velcro.sw.zoo`)."""

from __future__ import annotations

from pathlib import Path

NAMES = ("resnet18", "googlenet", "mobilenet_v2")


def register(sub) -> None:
    p = sub.add_parser("zoo", help="the model zoo: torchvision's resnet18, googlenet and "
                       "mobilenet_v2 trained on Fashion-MNIST (64x64), cached in the user "
                       "folder")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = actions.add_parser("train", help="train a zoo network on the 50,000 fit images, a "
                           "checkpoint per epoch; a second call resumes from it")
    q.add_argument("name", metavar="NAME", help=", ".join(NAMES))
    q.add_argument("--epochs", type=int, default=5, help="epochs in all, those of a resumed "
                   "checkpoint included (default 5)")
    q.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    q.add_argument("--lr", type=float, default=1e-3, help="AdamW's learning rate of epoch 1 "
                   "(x0.7 per later epoch; default 0.001)")
    q.add_argument("--seed", type=int, default=0,
                   help="seed of the initial weights, batch order and dropout (default 0)")
    q.add_argument("--images", type=int, help="train on this many fit images (a seeded "
                   "choice; default all 50,000), for quick runs")
    q.add_argument("--eval-images", type=int, help="measure on the first this many held-out "
                   "and test images (default all 10,000 of each), for quick runs")
    q.add_argument("--threads", type=int, help="torch threads (default: torch's, one per "
                   "core); on a machine other jobs load, 1 can be much faster")
    q.add_argument("--fresh", action="store_true",
                   help="start from the initial weights, ignoring (and replacing) a checkpoint")
    q.set_defaults(func=cmd_zoo_train)
    q = actions.add_parser("list", help="every zoo network: trained or not, epochs, held-out "
                           "and test accuracy, image size, path")
    q.add_argument("--json", type=Path, help="also write the rows (a list) as JSON")
    q.set_defaults(func=cmd_zoo_list)


def cmd_zoo_train(args) -> None:
    from ..zoo import check_name, train_zoo, weights_path

    check_name(args.name)
    record = train_zoo(args.name, args.epochs, args.batch_size, args.lr, args.seed,
                       args.images, args.eval_images, args.fresh,
                       threads=args.threads)
    print(f"{args.name}: held-out {100 * record['heldout_accuracy']:.2f}% (epoch "
          f"{record['best_epoch']} of {record['epochs']}), test "
          f"{100 * record['test_accuracy']:.2f}%, {record['train_seconds']:.0f} s -> "
          f"{weights_path(args.name)}")


def cmd_zoo_list(args) -> None:
    from ..files import write_json
    from ..zoo import zoo_listing

    rows = zoo_listing()
    header = ["network", "cached", "epochs", "held-out", "test", "image size", "path"]
    table = [header]
    for row in rows:
        table.append([row["name"], "cached" if row["cached"] else "not cached",
                      "-" if row["epochs"] is None else str(row["epochs"]),
                      "-" if row["heldout_accuracy"] is None
                      else f"{100 * row['heldout_accuracy']:.2f}%",
                      "-" if row["test_accuracy"] is None
                      else f"{100 * row['test_accuracy']:.2f}%",
                      "-" if row["image_size"] is None else "x".join(map(str, row["image_size"])),
                      row["path"]])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if args.json:
        write_json(args.json, rows)
        print(f"wrote {args.json}")
