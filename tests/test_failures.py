"""Why a trial failed, found by exception type through Ray's wrappers (the end-to-end path, a
diverging trial in a real sweep, is in test_services.py)."""

from __future__ import annotations

import pytest

from kmervae.base.errors import InputError, TrainingDiverged
from kmervae.distributed.failures import kmervae_error, root_cause, root_cause_of_text

ray_exceptions = pytest.importorskip("ray.exceptions")
ray_train = pytest.importorskip("ray.train")

REASON = "training loss became inf; lower train.lr, raise train.grad_clip protection, or check the features"


def wrapped_as_ray_does(worker_error: BaseException) -> BaseException:
    """A Tune trial's error: RayTaskError(WorkerGroupError) around the rank's own exception."""
    group = ray_train.WorkerGroupError(f"[Rank 0 Error Snippet]:\nTraceback ...\n{worker_error!r}", {0: worker_error})
    return ray_exceptions.RayTaskError("ImplicitFunc.train", "Traceback (most recent call last): ...", group)


def test_the_worker_s_own_error_is_found_inside_ray_s_wrappers():
    diverged = TrainingDiverged(REASON)
    err = wrapped_as_ray_does(diverged)
    assert kmervae_error(err) is diverged
    assert root_cause(err) == REASON
    try:  # Python's chain too: an error raised while handling another
        try:
            raise InputError("features.parquet: no such column 'kmer7'")
        except InputError as inner:
            raise RuntimeError("the worker stopped") from inner
    except RuntimeError as outer:
        assert root_cause(outer) == "features.parquet: no such column 'kmer7'"


def test_an_error_that_is_not_the_user_s_is_its_last_line():
    assert root_cause(wrapped_as_ray_does(MemoryError())) == "MemoryError"
    assert root_cause(wrapped_as_ray_does(OSError(28, "No space left on device"))) == (
        "OSError: [Errno 28] No space left on device"
    )


def test_the_reason_from_a_trial_s_error_file():
    text = (
        "Failure # 1 (occurred at 2026-12-05_20-58-55)\n"
        "ray::ImplicitFunc.train() (pid=29924, ip=192.0.2.2)\n"
        '  File "/work/main/kmervae/core/engine.py", line 175, in train_epoch\n'
        "    raise TrainingDiverged(\n"
        f"kmervae.base.errors.TrainingDiverged: {REASON}\n"
        "\nThe above exception was the direct cause of the following exception:\n\n"
        "ray.train.WorkerGroupError: Training failed due to worker errors:\n"
    )
    assert root_cause_of_text(text) == REASON
    # A diverged trial raises the worker's own error, which Ray wraps in a subclass of it,
    # "RayTaskError(TrainingDiverged)": the reason is found all the same, in the text and the object.
    trial_error = ray_exceptions.RayTaskError("ImplicitFunc.train", "...", TrainingDiverged(REASON))
    assert root_cause(trial_error.as_instanceof_cause()) == REASON
    assert root_cause_of_text(text) == REASON  # again, now that Ray has made that class
    assert root_cause_of_text("Traceback ...\nOSError: [Errno 28] No space left on device\n") == (
        "OSError: [Errno 28] No space left on device"
    )
