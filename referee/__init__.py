"""The referee's package (FROZEN); eval.py is its entry point, api its one door for the harness (a RunSpec in,
a row out). spec: a run as data. core: what decides val_bpb (its hash is every row's eval_sha). data: the
corpus. contract: what an experiment provides. args: the training worker's side of just eval's command line.
worker: the processes that run the experiment's code; sandbox: what they may touch (landlock: the kernel's
wall; the tripwire: Python's); wire: their messages; supervisor: the referee's side of them."""
