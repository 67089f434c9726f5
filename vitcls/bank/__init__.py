"""Head banks: K head designs trained together on one frozen backbone, each as trustworthy as its own run.

`python train.py bank=<name>` (conf/bank/) runs `vitcls.bank.run.run` instead of a lone run. Data flow:
  designs.expand_bank           the lists -> `BankDesign`s (name, head spec, tap, lr, weight decay, the overrides
                                that train it alone); impossible combinations left out, with the reason
  vitcls.models.bank            `HeadBank` (backbone, shared taps, heads built as their lone runs build them) and
                                `BankModule` (one loss per head summed; per-head groups, metrics, best epoch)
  features                      the feature cache per distinct tap (shared with lone runs), one backbone pass
  run                           fit, each head at its best validation epoch, val and test, select on validation
  report, figure                bank.json, bank.csv, bank.png, heads/<NN>/ (predictions, confusion, weights)
  checkpoint                    the selected head's checkpoint (summary.json's best_ckpt); any head exported by
                                name (vitcls-export RUN OUT --bank-head NAME)
vitcls-compare reads a bank run as one design per head (vitcls.compare.runs).
"""
