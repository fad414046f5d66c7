"""Train a model described by a YAML config, then test it and print the energy report.

    python train.py --config configs/digits_svmamba.yaml           # one process (CPU or one GPU)
    python train.py --config configs/digits_svmamba.yaml --resume  # continue from last.pt
    torchrun --nproc_per_node=N train.py --config ...              # DDP (NCCL on GPUs, gloo on CPU)

Writes last.pt, best.pt, log.csv, curves.png, test_report.json and test_report.png under
output_dir/task_name/.
"""

import sys

from svm_models.training import cli, distributed, engine, evaluation
from svm_models.training.config import load_config


def main(argv=None) -> int:
    p = cli.parser("Train a model from a YAML config, then test it (accuracy + energy report).")
    p.add_argument("--resume", action="store_true", help="continue from output_dir/task_name/last.pt")
    p.add_argument("--no-test", action="store_true", help="skip the final test-split evaluation and report")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    info = distributed.setup()
    try:
        result = engine.fit(cfg, info, resume=args.resume)
        if info.is_main:
            print(
                f"training time {result['train_time_s']:.1f}s; best val top-1 {result['best_acc']:.2f}% "
                f"at epoch {result['best_epoch']}",
                flush=True,
            )
            if not args.no_test:
                model, path, _ = evaluation.load_trained_model(cfg, result["best_path"], info.device)
                evaluation.run_test(cfg, model, path, num_classes=result["num_classes"])
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
