"""Train a model described by a YAML config, then test it and print the energy report.

    python train.py --config configs/digits_svmamba.yaml              # one process (CPU or one GPU)
    python train.py --config configs/digits_svmamba.yaml --resume     # continue from last.pt
    python train.py --config ... --resume --epochs 30                 # extend a finished run
    python train.py --config ... --overwrite                          # replace the run's files
    python train.py --config ... --opts lr=1e-3 batch_size=64         # override config keys
    torchrun --nproc_per_node=N train.py --config ...                 # DDP (NCCL on GPUs, gloo on CPU)

Writes last.pt, best.pt, log.csv, curves.png, config.yaml, train.log, test_report.json and
test_report.png under output_dir/task_name/, which must not hold another run (see the README).
"""

import functools
import sys

from svm_models.training import cli, config, distributed, engine, evaluation, rundir, runtime


def main(argv=None) -> int:
    p = cli.parser("Train a model from a YAML config, then test it (accuracy + energy report).")
    cli.add_training_flags(p)
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from output_dir/task_name/last.pt")
    again.add_argument(
        "--overwrite", action="store_true", help="delete the run already in output_dir/task_name"
    )
    p.add_argument("--no-test", action="store_true", help="skip the final test-split evaluation and report")
    args = p.parse_args(argv)
    cfg = cli.config_from_args(args)  # every rank checks it before the process group exists
    runtime.set_threads(cfg)
    runtime.retain_freed_memory()
    info = distributed.setup(cfg["device"])
    try:
        result = engine.fit(cfg, info, resume=args.resume, overwrite=args.overwrite)
        if info.is_main:
            # the closing lines go to the run's train.log too, as the epochs' lines did
            log = functools.partial(rundir.append_log, config.run_dir(cfg))
            evaluation.console(log)(
                f"training time {result['train_time_s']:.1f}s; best val top-1 {result['best_acc']:.2f}% "
                f"at epoch {result['best_epoch']}"
            )
            if not args.no_test:
                model, path, _ = evaluation.load_trained_model(cfg, result["best_path"], info.device)
                evaluation.run_test(cfg, model, path, num_classes=result["num_classes"], log=log)
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
