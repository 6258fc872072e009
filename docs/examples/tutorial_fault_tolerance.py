"""TensorFlow's multi-worker Keras tutorial, fault-tolerance part, with tfplace's one-line change.

The structure follows "Multi-worker training with Keras"
(https://www.tensorflow.org/tutorials/distribute/multi_worker_with_keras), section "Fault
tolerance": a setup module with a dataset function and a model-building function, a
multi-worker strategy, a ``BackupAndRestore`` callback with ONE backup folder shared by every
worker, and ``model.fit`` for a few epochs. Three things differ, each marked below:

1. ``tfplace.pick_strategy()`` instead of ``tf.distribute.MultiWorkerMirroredStrategy()``;
2. ``tfplace.callbacks.BackupAndRestore`` instead of ``tf.keras.callbacks.BackupAndRestore``
   (the one-line change);
3. no download: the data are synthetic, MNIST-shaped and fixed by a seed.

Run it as two local workers; kill one, run it again, and it resumes from the last epoch::

    tfplace launch -n 2 --max-restarts 1 docs/examples/tutorial_fault_tolerance.py /tmp/backup
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import tfplace
import tfplace.callbacks

# ---------------------------------------------------------------------------------------------
# The tutorial's `mnist_setup.py`: a dataset function and a model-building function.

NUM_SAMPLES = 512  # the tutorial trains on MNIST's 60,000 images; 512 keeps this fast
PER_WORKER_BATCH_SIZE = 32  # the tutorial uses 64


def mnist_images(num_samples: int = NUM_SAMPLES, seed: int = 0) -> tuple[Any, Any]:
    """MNIST-shaped data without a download: 28x28 uint8 images, labels 0-9, fixed by ``seed``.

    Each image is noise plus a bright band whose row depends on the label, so the task can be
    learned.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=num_samples).astype("int64")
    images = rng.integers(0, 96, size=(num_samples, 28, 28))
    for i, label in enumerate(labels):
        images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
    return images.astype("uint8"), labels


def mnist_dataset(batch_size: int) -> Any:
    """The training data as a ``tf.data.Dataset`` of ``(image / 255, label)`` batches.

    As in the tutorial: scale to [0, 1], shuffle, repeat, batch. One difference matters for
    resuming: the shuffle has a seed and the same order in every pass
    (``reshuffle_each_iteration=False``), so a restarted run sees in each epoch the batches an
    uninterrupted run saw (see "When is resuming exact?" on the Fault tolerance page).
    """
    images, labels = mnist_images()
    x = images.astype("float32") / np.float32(255)
    return (
        tf.data.Dataset.from_tensor_slices((x, labels))
        .shuffle(NUM_SAMPLES, seed=1, reshuffle_each_iteration=False)
        .repeat()
        .batch(batch_size)
    )


def build_and_compile_cnn_model() -> Any:
    """The tutorial's small convolutional network, compiled (seeded for reproducible weights)."""
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.Input(shape=(28, 28)),
            keras.layers.Reshape(target_shape=(28, 28, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),  # the tutorial: 32 filters
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),  # the tutorial: 128 units
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=keras.optimizers.SGD(learning_rate=0.05),  # the tutorial: 0.001
        metrics=["accuracy"],
    )
    return model


# ---------------------------------------------------------------------------------------------
# The tutorial's `main.py`, fault-tolerance section.


def main(backup_dir: str, epochs: int = 3, extra_callbacks: Sequence[Any] = ()) -> Any:
    """Train with a backup in ``backup_dir`` (the same folder in every worker); return the model.

    ``extra_callbacks`` go to ``fit`` after the backup callback (the test adds one that kills
    a worker).
    """
    # The tutorial: strategy = tf.distribute.MultiWorkerMirroredStrategy(). With Keras 3, stock
    # MultiWorkerMirroredStrategy fails in model.fit (keras-team/keras#20585); pick_strategy()
    # returns a subclass that works, and a single-process strategy when there is no cluster.
    strategy = tfplace.pick_strategy()

    global_batch_size = PER_WORKER_BATCH_SIZE * strategy.num_replicas_in_sync
    dataset = mnist_dataset(global_batch_size)
    with strategy.scope():
        model = build_and_compile_cnn_model()

    callbacks = [
        # The tutorial: tf.keras.callbacks.BackupAndRestore(backup_dir='/tmp/backup')
        tfplace.callbacks.BackupAndRestore(backup_dir=backup_dir),
        *extra_callbacks,
    ]
    history = model.fit(
        dataset,
        epochs=epochs,
        # An epoch is one pass over the data (512 = 8 batches of 64 with two workers).
        steps_per_epoch=NUM_SAMPLES // global_batch_size,
        callbacks=callbacks,
        verbose=0,
    )
    role = "chief" if tfplace.is_chief() else "worker"
    print(f"{role}: epochs trained {history.epoch}, final loss {history.history['loss'][-1]:.4f}")
    return model


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
