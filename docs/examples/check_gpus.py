"""Example 1: see what TensorFlow can use, and turn on GPU memory growth."""

import tfplace

# Before TensorFlow starts: growth on every visible GPU (a no-op on a CPU-only machine).
config = tfplace.configure_gpus(memory_growth=True)
inv = tfplace.inventory()
print(f"GPUs visible: {len(inv.visible_gpus)}; memory growth: {config.memory_growth}")
for gpu in inv.visible_gpus:
    print(f"  GPU {gpu.index}: {gpu.name}, compute capability {gpu.compute_capability}")
print("strategy:", tfplace.plan().summary())
