"""Benchmark suites: one study (a head bank, probes) across many datasets, seeds and few-shot draws, and one
leaderboard (`python train.py suite=<name>`, conf/suite/).

  cells        what one dataset's job runs: seeds x (all the training data, and each shot count x draw)
  job          a dataset's job: every cell through the one run lifecycle, on that dataset's cached features
  board        the suite directory's results -> vitcls.compare.leaderboard -> leaderboard.{json,csv,md,png}
  callback     Hydra callback: the suite's manifest at launch, the leaderboard when the last job ends

A suite is a Hydra multirun over its datasets (one job per dataset, by whatever launcher: in this process, or a
cluster's), each job writing `<suite dir>/<dataset>/<cell>/` run directories.
"""
