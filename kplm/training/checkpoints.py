"""Checkpoints of a training run: model and optimizer state every N steps, newest K kept."""
import os

import keras
import tensorflow as tf


class CheckpointSaver(keras.callbacks.Callback):
    """Saves ``tf.train.Checkpoint(model, optimizer)`` into ``directory`` every ``every`` steps
    (and at the end), numbered by the optimizer step, keeping the newest ``keep``.

    TensorFlow writes the data files first and updates the ``checkpoint`` index last, so an
    interrupted save never replaces the previous good checkpoint.
    """

    def __init__(self, directory, every, keep=3):
        super().__init__()
        self.directory, self.every, self.keep = directory, every, keep
        self._manager = None

    def _get_manager(self):
        if self._manager is None:
            checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer)
            self._manager = tf.train.CheckpointManager(checkpoint, self.directory,
                                                       max_to_keep=self.keep)
        return self._manager

    def _step(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        if step % self.every == 0:
            self._get_manager().save(checkpoint_number=step)

    def on_train_end(self, logs=None):
        step = self._step()
        manager = self._get_manager()
        if manager.latest_checkpoint is None or not manager.latest_checkpoint.endswith(f"-{step}"):
            manager.save(checkpoint_number=step)

    @staticmethod
    def latest(directory):
        return tf.train.latest_checkpoint(directory) if os.path.isdir(directory) else None
