"""Results as files a researcher reads, and handed to the configured loggers.

  figures           confusion matrices, per-class reports, the prediction gallery, the head-bank chart
  predictions_csv   per-image predictions of a split (written by runs and eval.py, read by vitcls-compare)
  results           what a finished run hands over: summary, per-head metrics and predictions, figures, tables
  publish           handing config, results and comparisons to the configured loggers

Loggers get results through vitcls.reporting.publish and nothing else: a logger that is a `vitcls.loggers.ResultSink`
receives the run's config, its results and comparisons; every other Lightning logger gets Lightning's metrics only.
"""
