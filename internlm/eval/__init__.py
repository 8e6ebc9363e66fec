"""The three EgoAgent evaluations: metric code shared by the top-level eval scripts (each script's --help states
its protocol).

knn.py        weighted kNN classification (eval_knn_conv_stem_cls.py)
retrieval.py  future-state retrieval ranks, Top-1 and mAP (eval_feature_retrieval.py)
motion.py     MPJPE / MPJVE and the zero- and constant-velocity baselines (eval_3dposes.py)
rollout.py    the autoregressive pose rollout of the joint model (eval_3dposes.py)
plots.py      the PNGs (retrieval examples, skeleton rollouts)
cli.py, distributed.py   launch, checkpoint, gather/reduce and report plumbing of the scripts
"""
