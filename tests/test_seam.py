"""The seam's feature probes: every private TensorFlow/Keras attribute tfplace relies on is
looked for first, and a stand-in that lacks it (as another Keras release might) gets ONE clear
TfplaceWarning (which internal, the versions tested, what is off, what still works) and the
feature off, or a TfplaceError before training, never an AttributeError inside ``fit``."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import tomllib

import tfplace
from tfplace import _tf
from tfplace._tf import _probes, _strategies
from tfplace.errors import TfplaceError, TfplaceWarning

pytestmark = pytest.mark.tf

ROOT = Path(__file__).parent.parent


@pytest.fixture(autouse=True)
def fresh_warnings() -> Iterator[None]:
    """Each test sees each internal's warning anew (they are given once per process)."""
    _probes._forget_warnings()
    yield
    _probes._forget_warnings()


def said(record: list[warnings.WarningMessage], key: str) -> list[str]:
    """The texts of the TfplaceWarnings about internal ``key``, checked for their parts."""
    texts = [
        str(w.message)
        for w in record
        if issubclass(w.category, TfplaceWarning) and _tf.INTERNALS[key].name in str(w.message)
    ]
    for text in texts:
        assert "TensorFlow 2.21, Keras 3.15, tf_keras 2.21" in text  # the versions tested
        assert "Off: " in text and "Still works: " in text and "Fix: " in text
    return texts


def keras3_model() -> Any:
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


# ----------------------------------------------------------------------- the message itself


def test_the_message_names_the_internal_versions_and_what_still_works() -> None:
    text = _probes.internal_text("train_function", "found None")
    assert text.startswith("tfplace relies on model.train_function")
    assert "found None" in text
    assert "TensorFlow 2." in text  # the versions found in this process
    assert "resuming mid-epoch" in text  # off
    assert "restores at epoch boundaries" in text  # still works


def test_each_internal_warns_once_per_process() -> None:
    with pytest.warns(TfplaceWarning) as record:
        assert _probes.internal_missing("flatten_layers", "gone") is True
    assert len(said(list(record), "flatten_layers")) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _probes.internal_missing("flatten_layers", "gone again") is False


# ------------------------------------------------------------- strategy.extended._num_workers


class MultiWorkerStandIn:
    """A multi-worker strategy as far as the probe looks: ``extended`` and a resolver."""

    def __init__(self, extended: object) -> None:
        self.extended = extended
        jobs = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
        self.cluster_resolver = SimpleNamespace(
            cluster_spec=lambda: SimpleNamespace(as_dict=lambda: jobs)
        )


def test_the_worker_count_is_read_from_the_internal_where_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_strategies, "is_multi_worker", lambda s: isinstance(s, MultiWorkerStandIn))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _tf.strategy_num_workers(MultiWorkerStandIn(SimpleNamespace(_num_workers=5))) == 5
        assert _tf.strategy_num_workers(tfplace.pick_strategy("default")) == 1
        assert _tf.strategy_num_workers(None) == 1


def test_a_moved_worker_count_falls_back_to_the_cluster_resolver_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_strategies, "is_multi_worker", lambda s: isinstance(s, MultiWorkerStandIn))
    moved = MultiWorkerStandIn(SimpleNamespace(num_workers_renamed=3))
    with pytest.warns(TfplaceWarning) as record:
        count = _tf.strategy_num_workers(moved)
    assert count == 3  # chief + 2 workers, from the public cluster resolver
    assert len(said(list(record), "num_workers")) == 1
    assert "no worker count _num_workers" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _tf.strategy_num_workers(moved) == 3  # once: no second warning


def test_the_callbacks_see_several_workers_through_the_probe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tfplace.callbacks._keras import multi_worker

    monkeypatch.setattr(_strategies, "is_multi_worker", lambda s: isinstance(s, MultiWorkerStandIn))
    model = SimpleNamespace(distribute_strategy=MultiWorkerStandIn(SimpleNamespace()))
    with pytest.warns(TfplaceWarning, match=re.escape("strategy.extended._num_workers")):
        assert multi_worker(model) is True


# ------------------------------------------------------------ the epoch fit starts at


def test_the_initial_epoch_is_set_and_cleared_on_a_keras3_model() -> None:
    model = keras3_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _tf.set_initial_epoch(model, 2, legacy=False) is True
        assert model._initial_epoch == 2
        _tf.clear_initial_epoch(model, legacy=False)
        assert model._initial_epoch is None


def test_the_initial_epoch_of_a_tf_keras_model_goes_through_its_training_state() -> None:
    standin = SimpleNamespace(_training_state=None)  # what tf_keras's Model.__init__ sets
    assert _tf.set_initial_epoch(standin, 3, legacy=True) is True
    state: Any = standin._training_state
    assert state.maybe_load_initial_counters_from_ckpt(4, 0) == (3, 0)
    assert state.maybe_load_initial_epoch_from_ckpt(0) == 3
    _tf.clear_initial_epoch(standin, legacy=True)
    assert standin._training_state is None


@pytest.mark.parametrize(
    ("legacy", "attribute"), [(False, "_initial_epoch"), (True, "_training_state")]
)
def test_a_model_without_the_epoch_internal_is_left_alone_and_said_once(
    legacy: bool, attribute: str
) -> None:
    standin = SimpleNamespace()
    with pytest.warns(TfplaceWarning) as record:
        applied = _tf.set_initial_epoch(standin, 2, legacy=legacy)
    assert applied is False
    (text,) = said(list(record), "initial_epoch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _tf.set_initial_epoch(standin, 2, legacy=legacy) is False
    assert f"has no attribute {attribute}" in text
    assert "fit(initial_epoch=" in text  # what the user can do instead
    assert vars(standin) == {}
    _tf.clear_initial_epoch(standin, legacy=legacy)  # nothing to clear: no error
    assert vars(standin) == {}


def test_a_resume_without_the_epoch_internal_trains_from_the_start_instead_of_failing(
    tmp_path: Path,
) -> None:
    """A real Keras 3 fit with BackupAndRestore, restoring a backup into a model whose
    ``_initial_epoch`` is gone: one warning, every epoch trained, no AttributeError."""
    import tfplace.callbacks

    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    y = x.sum(1, keepdims=True)
    backup = tmp_path / "backup"

    first = keras3_model()
    saver = tfplace.callbacks.BackupAndRestore(backup, delete_checkpoint=False)
    first.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[saver])

    resumed = keras3_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error", TfplaceWarning)
        history = resumed.fit(
            x,
            y,
            batch_size=8,
            epochs=3,
            verbose=0,
            callbacks=[tfplace.callbacks.BackupAndRestore(backup, delete_checkpoint=False)],
        )
    assert len(history.epoch) == 1  # resumed at epoch 2 of 3

    keras = pytest.importorskip("keras")

    base: Any = keras.callbacks.Callback

    class RenamedEpoch(base):  # type: ignore[misc]
        """After tfplace's callback: this stand-in Keras's fit reads another name, unset."""

        def on_train_begin(self, logs: Any = None) -> None:
            self.model._initial_epoch = None

    moved = keras3_model()
    del moved._initial_epoch  # as a Keras release that renamed it
    with pytest.warns(TfplaceWarning) as record:
        history = moved.fit(
            x,
            y,
            batch_size=8,
            epochs=3,
            verbose=0,
            callbacks=[tfplace.callbacks.BackupAndRestore(backup), RenamedEpoch()],
        )
    assert len(said(list(record), "initial_epoch")) == 1
    assert history.epoch == [0, 1, 2]  # fit's own initial_epoch: all three


# --------------------------------------------------------------------- the train function


class TrainStandIn:
    def __init__(self, steps_per_execution: Any = 1) -> None:
        self.steps_per_execution = steps_per_execution
        self.trained: list[int] = []
        self.train_function = self.train

    def train(self, iterator: Iterator[int]) -> dict[str, float]:
        self.trained.append(next(iterator))
        return {"loss": 0.0}


def test_skipping_draws_the_batches_without_training_then_puts_the_function_back() -> None:
    model = TrainStandIn(steps_per_execution=SimpleNamespace(numpy=lambda: 2))  # tf_keras-like
    original = model.train_function
    undo = _tf.skip_train_steps(model, 4)
    assert undo is not None
    batches = iter(range(10))
    for _ in range(3):  # fit's calls: two skip two batches each, the third trains
        model.train_function(batches)
    assert model.trained == [4]
    assert model.train_function == original
    undo()  # already put back: nothing changes
    assert model.train_function == original


def test_the_undo_puts_the_train_function_back_when_fit_ends_early() -> None:
    model = TrainStandIn()
    original = model.train_function
    undo = _tf.skip_train_steps(model, 5)
    assert undo is not None and model.train_function != original
    undo()
    assert model.train_function == original


def test_a_model_without_a_train_function_skips_nothing_and_says_so_once() -> None:
    standin = SimpleNamespace(steps_per_execution=1)
    with pytest.warns(TfplaceWarning) as record:
        undo = _tf.skip_train_steps(standin, 3)
    assert undo is None
    (text,) = said(list(record), "train_function")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _tf.skip_train_steps(standin, 3) is None
    assert "not a function" in text and "trains its epoch again" in text
    assert vars(standin) == {"steps_per_execution": 1}


# --------------------------------------------------------------- ModelCheckpoint's hooks


def test_the_checkpoint_hooks_are_there_in_both_kerases() -> None:
    keras = pytest.importorskip("keras")
    _tf.check_checkpoint_hooks(keras.callbacks.ModelCheckpoint)
    tf_keras = pytest.importorskip("tf_keras")
    _tf.check_checkpoint_hooks(tf_keras.callbacks.ModelCheckpoint)


def test_a_keras_without_the_checkpoint_hooks_is_refused_before_training(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tfplace.callbacks
    from tfplace.callbacks import _keras as flavoured

    class ModelCheckpoint:  # a release that renamed _save_model
        def _get_file_path(self, epoch: Any, batch: Any, logs: Any) -> str:
            return "x"

    class Callback:
        pass

    fake = SimpleNamespace(
        __name__="keras_next",
        callbacks=SimpleNamespace(ModelCheckpoint=ModelCheckpoint, Callback=Callback),
    )
    monkeypatch.setattr(_tf, "load_keras", lambda stacklevel=2: fake)
    monkeypatch.setattr(flavoured, "_classes", {})
    with pytest.raises(TfplaceError) as caught:
        tfplace.callbacks.ModelCheckpoint("/tmp/x/e{epoch}.keras")
    text = str(caught.value)
    assert "ModelCheckpoint._get_file_path and ModelCheckpoint._save_model" in text
    assert "has no _save_model" in text and "TensorFlow 2.21, Keras 3.15" in text
    assert "worker_save_path" in text  # what still works
    tfplace.callbacks.BackupAndRestore("/tmp/x")  # the other callback is not affected


# ------------------------------------------------------------------------ layers, datasets


def test_flat_layers_reads_nested_layers_and_walks_the_public_lists_without_the_internal() -> None:
    model = keras3_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        real = _tf.flat_layers(model)
    assert real[0] is model and len(real) == 4  # the model, its input and two Dense
    leaf = SimpleNamespace(name="leaf")
    standin = SimpleNamespace(layers=[SimpleNamespace(layers=[leaf])])
    with pytest.warns(TfplaceWarning) as record:
        walked = _tf.flat_layers(standin)
    assert len(said(list(record), "flatten_layers")) == 1
    assert walked[0] is standin and walked[-1] is leaf and len(walked) == 3


def test_a_dataset_without_inputs_is_sharded_by_element_and_said_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import tensorflow as tf

    from tfplace._data import shard_policy_for

    files = []
    for i in range(3):
        path = str(tmp_path / f"{i}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            writer.write(b"x")
        files.append(path)
    pipeline = tf.data.Dataset.from_tensor_slices(files).interleave(tf.data.TFRecordDataset)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert shard_policy_for(pipeline, 2)[0] == "file"
    monkeypatch.setattr(type(pipeline), "_inputs", None)
    with pytest.warns(TfplaceWarning) as record:
        assert shard_policy_for(pipeline, 2)[0] == "data"
    assert len(said(list(record), "dataset_inputs")) == 1


# ------------------------------------------------------------------- class patches, keys


def test_wrap_method_puts_back_exactly_what_was_there() -> None:
    class Base:
        def hook(self) -> str:
            return "base"

    class Inherits(Base):
        pass

    class Owns(Base):
        def hook(self) -> str:
            return "own"

    for cls, expected in ((Inherits, "base"), (Owns, "own")):
        had_own = "hook" in vars(cls)
        undo = _tf.wrap_method(cls, "hook", lambda original: lambda self: "wrapped")
        assert cls().hook() == "wrapped"
        undo()
        undo()  # twice: no error, no change
        assert cls().hook() == expected
        assert ("hook" in vars(cls)) == had_own


def test_a_keras_without_a_stock_callback_leaves_it_out_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class ModelCheckpoint:
        def on_train_begin(self, logs: Any = None) -> None:
            pass

    fake = SimpleNamespace(
        __name__="keras", callbacks=SimpleNamespace(ModelCheckpoint=ModelCheckpoint)
    )
    monkeypatch.setattr("tfplace._tf._keras.load_keras", lambda: fake)
    with pytest.warns(TfplaceWarning) as record:
        assert _tf.stock_callback_classes() == {"ModelCheckpoint": ModelCheckpoint}
    (text,) = said(list(record), "stock_callbacks")
    assert "keras.callbacks.BackupAndRestore is None" in text


def test_collective_keys_without_the_class_attribute_are_said_not_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class MirroredStrategy:
        pass

    fake = SimpleNamespace(distribute=SimpleNamespace(MirroredStrategy=MirroredStrategy))
    monkeypatch.setattr(_strategies, "load", lambda: fake)
    with pytest.warns(TfplaceWarning) as record:
        _tf.fresh_collective_keys()
    assert len(said(list(record), "collective_key_base")) == 1
    assert not hasattr(MirroredStrategy, "_collective_key_base")


def test_no_internal_is_missing_on_the_tested_releases() -> None:
    """On TensorFlow 2.21 / Keras 3.15 every probe finds its internal: no warning."""
    import tensorflow as tf

    model = keras3_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error", TfplaceWarning)
        assert set(_tf.stock_callback_classes()) == {"ModelCheckpoint", "BackupAndRestore"}
        assert _tf.set_initial_epoch(model, 0, legacy=False)
        _tf.clear_initial_epoch(model, legacy=False)
        assert len(_tf.flat_layers(model)) == 4
        assert _tf.dataset_inputs(tf.data.Dataset.range(3).map(lambda v: v))
        _tf.fresh_collective_keys()
        model.make_train_function()
        undo = _tf.skip_train_steps(model, 1)
        assert undo is not None
        undo()


# --------------------------------------------------------------------------- versions


def test_the_declared_versions_start_at_the_tested_ones() -> None:
    """pyproject's lowest TensorFlow (every extra) and Keras are the releases tested."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    tf_pins = [
        d for name in ("cpu", "gpu", "tensorflow") for d in extras[name] if "tensorflow" in d
    ]
    assert len(tf_pins) == 3
    tested = _probes.TESTED_VERSIONS
    for pin in tf_pins:
        assert f">={tested['tensorflow']}" in pin, pin
    for name in ("cpu", "gpu", "tensorflow"):
        assert f"keras>={tested['keras']}" in extras[name], name
    readme = (ROOT / "README.md").read_text()
    assert _probes.tested_versions().replace(", tf_keras", " and tf_keras") in readme


def test_the_fault_tolerance_page_lists_every_internal_and_shows_the_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    page = (ROOT / "docs" / "fault-tolerance.md").read_text()
    for internal in _tf.INTERNALS.values():
        assert f"| `{internal.name}` | {internal.feature} | {internal.off} |" in page
    monkeypatch.setattr(_probes, "installed_versions", lambda: "TensorFlow 2.22.0, Keras 3.16.0")
    found = "Sequential.train_function is None when fit calls on_train_begin, not a function"
    assert f"TfplaceWarning: {_probes.internal_text('train_function', found)}\n" in page


# ------------------------------------- collective keys under Keras's multi-step loop


def test_collective_keys_are_numbered_at_trace_time_only_under_control_flow() -> None:
    """keras#19246: a function traced inside a tf.cond (Keras 3's loop for
    steps_per_execution > 1) gets trace-time keys; a function called directly keeps
    TensorFlow's call-time keys; the setting is put back after each trace."""
    import tensorflow as tf
    from tensorflow.python.distribute import cross_device_utils

    launcher = cross_device_utils.CollectiveReplicaLauncher
    seen: list[bool] = []

    def inner_step(x: Any) -> Any:
        with _tf.nested_collective_keys():
            seen.append(launcher._prefer_unique_instance_key)
        return x + 1

    inner: Any = tf.function(inner_step)

    def outer_step(x: Any) -> Any:
        return tf.cond(x > 0, lambda: inner(x), lambda: x)

    outer: Any = tf.function(outer_step)

    with warnings.catch_warnings():
        warnings.simplefilter("error", TfplaceWarning)
        assert int(outer(tf.constant(1))) == 2
        assert float(inner(tf.constant(2.0))) == 3.0
        with _tf.nested_collective_keys():  # eager: nothing to change
            seen.append(launcher._prefer_unique_instance_key)
    assert seen == [False, True, True]
    assert launcher._prefer_unique_instance_key is True


def test_a_tensorflow_without_the_instance_key_switch_is_said_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tensorflow as tf
    from tensorflow.python.distribute import cross_device_utils

    monkeypatch.delattr(cross_device_utils.CollectiveReplicaLauncher, "_prefer_unique_instance_key")

    def inner_step(x: Any) -> Any:
        with _tf.nested_collective_keys():
            return x + 1

    inner: Any = tf.function(inner_step)

    def outer_step(x: Any) -> Any:
        return tf.cond(x > 0, lambda: inner(x), lambda: x)

    outer: Any = tf.function(outer_step)

    with pytest.warns(TfplaceWarning) as record:
        outer(tf.constant(1))
    (text,) = said(list(record), "collective_instance_keys")
    assert "steps_per_execution" in text
