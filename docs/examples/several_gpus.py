"""Example 3: one replica per GPU with MirroredStrategy, chosen for you.

On a machine with several GPUs ``pick_strategy()`` mirrors over them; on a CPU-only machine
this example splits the CPU into two virtual devices so the same code runs two replicas.
"""

import numpy as np

import tfplace

if not tfplace.inventory().visible_gpus:
    tfplace.configure_cpus(virtual_devices=2)  # only to show two replicas on a CPU

import keras

strategy = tfplace.pick_strategy("mirrored")
print("replicas:", strategy.num_replicas_in_sync)

x = np.random.default_rng(0).normal(size=(512, 8)).astype("float32")
y = x.sum(axis=1, keepdims=True)
with strategy.scope():  # build and compile inside the scope
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, "relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse")
# Batch with the GLOBAL batch size: per-replica batch times replicas.
history = model.fit(x, y, batch_size=32 * strategy.num_replicas_in_sync, epochs=3, verbose=0)
print("loss per epoch:", [round(v, 4) for v in history.history["loss"]])
