"""Cluster descriptions: a :class:`ClusterSpec` read from TF_CONFIG, SLURM, Kubernetes or argv.

Pure reading and parsing, like the rest of the facts layer: no TensorFlow, no network, no
process started. The launchers (``tfplace.cluster``) sit above the decisions and use these.
"""
