"""Predict the classes of every image in a folder with a trained model.

    python predict.py --config configs/<name>.yaml --class_index_json <file> --img_folder <folder>

Prints the top-k classes with probabilities per image and writes them as JSON (default
output_dir/task_name/predictions.json). Unreadable or non-image files, directories and broken
symlinks are listed as skipped with the reason. 16-bit and float images are scaled to 8 bits by
their bit depth (floats: by their range). A checkpoint of train.py trained with another model,
img_size, T or model_args is refused (--allow-mismatch to use it anyway).
"""

import json
import os
import sys

from svm_models import data
from svm_models.training import cli, evaluation, inference, runtime
from svm_models.training.checkpoint import atomic_write_text
from svm_models.training.config import ConfigError, require_dir, require_file, run_dir
from svm_models.training.engine import img_size_of


def main(argv=None) -> int:
    p = cli.parser("Top-k predictions for every image file in a folder.")
    p.add_argument("--img_folder", required=True, help="folder of images (not searched recursively)")
    p.add_argument("--class_index_json", help='class names, {"0": ["n01532829", "house_finch"], ...}')
    p.add_argument("--topk", type=int, default=5, help="classes shown per image (default 5)")
    p.add_argument("--checkpoint", help="weights (default: config 'checkpoint', else the run's best.pt)")
    p.add_argument("--output", help="JSON file to write (default output_dir/task_name/predictions.json)")
    p.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="predict even if the checkpoint was trained with another model/img_size/T/model_args",
    )
    args = p.parse_args(argv)
    cfg = cli.config_from_args(args)
    if args.topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {args.topk}")
    if args.output is not None and not args.output.lower().endswith(".json"):
        # (it replaced whatever file it named: an image of the folder, the checkpoint itself)
        raise ConfigError(f"--output writes the predictions as JSON: name it *.json, got {args.output}")
    require_dir(args.img_folder, "image folder")
    if args.class_index_json:
        require_file(args.class_index_json, "class index json")
    files, unlisted = inference.list_files(args.img_folder)
    if not files and not unlisted:
        raise ConfigError(f"no files in image folder {args.img_folder}")

    runtime.set_threads(cfg)
    runtime.retain_freed_memory()
    device = runtime.resolve_device(cfg["device"])
    model, path, meta = evaluation.load_trained_model(cfg, args.checkpoint, device, args.allow_mismatch)
    n_classes = model.num_classes if hasattr(model, "num_classes") else meta.get("num_classes")
    classes = inference.class_names(cfg, meta, n_classes, args.class_index_json)
    transform = data.image_transform(cfg["dataset"], img_size_of(cfg))
    preds, unreadable = inference.predict_files(model, files, transform, classes, args.topk, device=device)
    skipped = sorted(unlisted + unreadable, key=lambda s: s["file"])

    for s in skipped:
        print(f"skipped {s['file']}: {s['error']}", file=sys.stderr, flush=True)
    if preds:
        print(inference.format_table(preds), flush=True)
    if not preds:  # (before writing: an earlier predictions file stays as it was)
        n = len(files) + len(unlisted)
        raise ConfigError(
            f"no image could be read among the {n} entries of {args.img_folder} (each skipped above, with why)"
        )
    out = args.output or os.path.join(run_dir(cfg), "predictions.json")
    atomic_write_text(
        json.dumps({"checkpoint": path, "predictions": preds, "skipped": skipped}, indent=2) + "\n", out
    )
    print(f"{len(preds)} image(s) predicted, {len(skipped)} skipped; wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
