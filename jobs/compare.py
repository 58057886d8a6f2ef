"""Compare feature models trained and evaluated alike (docs/experiments.md).

    ./spark-submit.sh compare [backbones=vgg16,efficientnetlite0] [sizes=80x60,160x120]
        [precisions=fp32,bf16] [random_init=vgg16] [--conf FILE] [key=value ...]
"""
import sys

from lookbook.cli import run_job

if __name__ == "__main__":
    run_job("compare", sys.argv[1:])
