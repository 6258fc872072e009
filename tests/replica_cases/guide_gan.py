# mypy: ignore-errors
# (code as guides and users write it: untyped on purpose)
"""The Keras guide's GAN ("Customizing what happens in fit()"): random latent vectors drawn in
``train_step`` with ``keras.random.normal``, on each replica for its share of the batch.

One replica draws 32 vectors from the seed; each of 2 replicas draws 16 from the same seed
state: other numbers, another training. The math: DIFFERENT from the first update; the cause is
the random draws in the step. The model logs ``d_loss`` and ``g_loss``, no ``loss``. (The guide
trains on MNIST images; here on 8 features, as the other cases.)
"""

from __future__ import annotations

import keras
import tensorflow as tf
from _data import FEATURES, arrays

LATENT = 4


class GAN(keras.Model):
    def __init__(self, discriminator, generator, latent_dim):
        super().__init__()
        self.discriminator = discriminator
        self.generator = generator
        self.latent_dim = latent_dim
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.seed_generator = keras.random.SeedGenerator(1337)

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker]

    def compile(self, d_optimizer, g_optimizer, loss_fn):
        super().compile()
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.loss_fn = loss_fn

    def train_step(self, real):
        if isinstance(real, tuple):
            real = real[0]
        batch_size = tf.shape(real)[0]
        latent = keras.random.normal(shape=(batch_size, self.latent_dim), seed=self.seed_generator)
        fake = self.generator(latent)
        combined = tf.concat([fake, real], axis=0)
        labels = tf.concat([tf.ones((batch_size, 1)), tf.zeros((batch_size, 1))], axis=0)
        labels += 0.05 * keras.random.uniform(tf.shape(labels), seed=self.seed_generator)
        with tf.GradientTape() as tape:
            d_loss = self.loss_fn(labels, self.discriminator(combined))
        grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
        self.d_optimizer.apply_gradients(
            zip(grads, self.discriminator.trainable_weights, strict=True)
        )
        latent = keras.random.normal(shape=(batch_size, self.latent_dim), seed=self.seed_generator)
        with tf.GradientTape() as tape:
            g_loss = self.loss_fn(
                tf.zeros((batch_size, 1)), self.discriminator(self.generator(latent))
            )
        grads = tape.gradient(g_loss, self.generator.trainable_weights)
        self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_weights, strict=True))
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {"d_loss": self.d_loss_tracker.result(), "g_loss": self.g_loss_tracker.result()}


def build() -> keras.Model:
    discriminator = keras.Sequential(
        [keras.Input((FEATURES,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)]
    )
    generator = keras.Sequential(
        [
            keras.Input((LATENT,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(FEATURES),
        ]
    )
    gan = GAN(discriminator, generator, LATENT)
    gan.built = True  # Keras 3.15's fit asks a model without call() to say it is built
    gan.compile(
        d_optimizer=keras.optimizers.SGD(0.01),
        g_optimizer=keras.optimizers.SGD(0.01),
        loss_fn=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    return gan


def data(strategy):
    x, _ = arrays()
    return tf.data.Dataset.from_tensor_slices(x).batch(32)
