"""Augmented copies of the small classes' train products, made in pandas UDFs.

    transforms.py  one copy: parameters from (seed, parent id, copy index), the affine warp
    copies.py      how many copies each class and parent gets; making them over Spark
    plan.py        which parents need new copies, and which copies leave, on each run
"""
