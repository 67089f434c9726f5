"""A training run from start to finish, and the directory it writes.

  lifecycle    the one sequence: plan -> data -> network -> fit -> test -> report
  studies      what a run trains and writes: a lone run, a head bank
  design_plan  the designs of a run (the config's one, or a bank's product), the network config they make
  inputs       images, or cached features / tokens of the frozen part of the backbone
  plan         start, resume, skip or refuse, from what the run directory holds
  layout       the run directory's files
  run_files    summary.json, per-image predictions and confusion matrices of a head
  bank_heads   a bank's table of heads, the selected head, any head as a network of its own
  evaluate     eval.py: a checkpoint scored on the test split, with its reports
"""
