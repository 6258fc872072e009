"""Example 2: preprocessing on the CPU, the model on the GPU (or the CPU when there is none)."""

import numpy as np

import tfplace

tfplace.configure_gpus(memory_growth=True)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

images = np.random.default_rng(0).integers(0, 255, size=(256, 28, 28), dtype=np.uint8)
labels = np.random.default_rng(1).integers(0, 10, size=(256,))

with tfplace.on_cpu():  # input work stays on the CPU
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, y)).batch(32)

with tfplace.on_gpu():  # falls back to the CPU, with a warning, when there is no GPU
    model = keras.Sequential(
        [keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
history = model.fit(ds, epochs=2, verbose=0)
print("loss per epoch:", [round(v, 4) for v in history.history["loss"]])
