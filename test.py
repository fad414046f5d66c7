"""Test a trained model: top-1/top-5 on the test split, then the energy accounting report
(params, MACs, SOPs, energy per image, firing rate per layer) as a table, JSON and PNG.

    python test.py --config configs/digits_svmamba.yaml    # (-config works too)

Weights: --checkpoint, else the config's `checkpoint`, else output_dir/task_name/best.pt. A
checkpoint of train.py trained with another model, img_size, T or model_args is refused
(--allow-mismatch to evaluate it anyway).
"""

import sys

from svm_models.training import cli, evaluation, runtime


def main(argv=None) -> int:
    p = cli.parser("Test a trained model: accuracy and the energy accounting report.")
    p.add_argument("--checkpoint", help="weights to test (overrides the config)")
    p.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="evaluate even if the checkpoint was trained with another model/img_size/T/model_args",
    )
    args = p.parse_args(argv)
    cfg = cli.config_from_args(args)
    runtime.set_threads(cfg)
    runtime.retain_freed_memory()
    device = runtime.resolve_device(cfg["device"])
    model, path, meta = evaluation.load_trained_model(cfg, args.checkpoint, device, args.allow_mismatch)
    evaluation.run_test(cfg, model, path, num_classes=meta.get("num_classes"))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
