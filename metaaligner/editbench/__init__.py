"""The editing benchmark: real answers damaged in ways a checker can verify, the objective that
names each repair, and the measures (fixed, kept, untouched) that need no judge.

``checks``: one checker per objective key (violations in a text; 0 = the objective is met), also
used as the ``rule`` reward scorers of stage 1. ``damage``: the seeded damage functions.
``bench``: rows, systems, measures, tables and the plot behind ``evaluation/edit_bench.py``.
"""
