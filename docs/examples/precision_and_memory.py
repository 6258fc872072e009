"""Pick the fast precision for this hardware, and measure a block's peak memory."""

import numpy as np

import tfplace

policy = tfplace.configure_precision()  # "auto": float32 on CPUs, mixed_* on Tensor Cores
print("dtype policy:", policy)

import keras  # noqa: E402

model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32), keras.layers.Dense(1)])
model.compile(optimizer="adam", loss="mse")
x = np.random.default_rng(0).normal(size=(256, 16)).astype("float32")

device = "GPU:0" if tfplace.inventory().visible_gpus else "CPU:0"
with tfplace.track_memory(device) as mem:
    model.fit(x, x[:, :1], epochs=1, verbose=0)
print(f"peak memory on {device}: {mem.peak_mb:.1f} MB (often 0 on CPUs: little is tracked)")
print("now:", tfplace.memory_info(device))
