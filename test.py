"""Test a trained model: top-1/top-5 on the test split, then the energy accounting report
(params, MACs, SOPs, energy per image, firing rate per layer) as a table, JSON and PNG.

    python test.py --config configs/digits_svmamba.yaml    # (-config works too)

Weights: --checkpoint, else the config's `checkpoint`, else output_dir/task_name/best.pt.
"""

import sys

import torch

from svm_models.training import cli, evaluation
from svm_models.training.config import load_config


def main(argv=None) -> int:
    p = cli.parser("Test a trained model: accuracy and the energy accounting report.")
    p.add_argument("--checkpoint", help="weights to test (overrides the config)")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, path, meta = evaluation.load_trained_model(cfg, args.checkpoint, device)
    evaluation.run_test(cfg, model, path, num_classes=meta.get("num_classes"))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
