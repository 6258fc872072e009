"""Facts: what is here (devices, cores, cluster environment, builds). Read, never decided.

Nothing in this package starts TensorFlow's runtime or changes a setting; see
``docs/architecture.md`` for the layers.
"""
