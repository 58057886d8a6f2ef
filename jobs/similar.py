"""The products most similar to a photo (image=PATH) or to a product (product_id=N).

    ./spark-submit.sh similar image=photo.jpg [k=5]  |  ./spark-submit.sh similar product_id=15970
"""
import sys

from lookbook.cli import run_job

if __name__ == "__main__":
    run_job("similar", sys.argv[1:])
