"""Preprocess on the CPU, batch with the global batch size, overlap with training."""

import numpy as np

import tfplace

if not tfplace.inventory().visible_gpus:
    tfplace.configure_cpus(virtual_devices=2)  # two replicas on a CPU-only machine

import keras
import tensorflow as tf

strategy = tfplace.pick_strategy("mirrored")

images = np.random.default_rng(0).integers(0, 255, size=(512, 28, 28), dtype=np.uint8)
labels = np.random.default_rng(1).integers(0, 10, size=(512,))


def preprocess(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    image = tf.cast(image, tf.float32) / 255.0
    image = tf.image.random_flip_left_right(image[..., None])
    return image, label


ds = tfplace.prepare_dataset(
    tf.data.Dataset.from_tensor_slices((images, labels)),
    batch_size=32,  # PER REPLICA
    strategy=strategy,
    preprocess=preprocess,  # parallel map on the CPU
    shuffle=512,
    seed=0,
)
print("global batch:", tfplace.global_batch_size(32, strategy))

with strategy.scope():
    model = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
model.fit(ds, epochs=2, verbose=0)
print("trained on", strategy.num_replicas_in_sync, "replicas")
