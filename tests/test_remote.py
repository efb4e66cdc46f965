"""Objects that live in the worker (RemoteObject, ref=True) and module proxies.

The same API runs against a worker and against main_environment where the
behaviour is the same; worker-only behaviour (restarts, pickling rules, GC
release) has its own tests.
"""
import gc
import os
import pickle
import pydoc
import subprocess
import time

import pytest

from conftest import wait_for, wetlite
from venv_worker_fixtures import any_env, fresh, mgr, shared, venv_on_local_python  # noqa: F401 (fixtures)

HERE = os.path.dirname(os.path.abspath(__file__))
T = os.path.join(HERE, "executor_data", "task_helpers.py")
HELPERS = os.path.join(HERE, "executor_data", "worker_helpers.py")

pytestmark = pytest.mark.skipif(os.name != "posix", reason="these tests kill workers with POSIX signals")


# --- using a handle ------------------------------------------------------------------

def test_methods_attributes_and_dunders(any_env):
    model = any_env.execute(T, "make_model", (3,), ref=True)
    assert isinstance(model, wetlite.RemoteObject)
    assert model.predict(5) == 15 and model.predict(1) == 3
    assert model.calls == 2                         # an attribute, by value
    assert model.doubled == 6                       # a property, read there
    assert model.kind == "model"
    model.scale = 10                                # set there
    assert model.predict(2) == 20
    assert model(1) == 11                           # __call__
    assert model["k"] == ("k", 10)                  # __getitem__
    assert {"predict", "child", "scale", "calls", "release"} <= set(dir(model))
    assert "task_helpers.Model" in repr(model) and any_env.name in repr(model)
    assert "<task_helpers.Model object at" in repr(model)   # the module's own name, not wetlite's for a path
    assert model.__doc__ == "A model that cannot be pickled (it holds a lock)."
    assert model.predict.__name__ == "predict"
    assert model.predict.__doc__ is None            # the method has none
    assert "RemoteObject" in wetlite.RemoteObject.__doc__
    with pytest.raises(AttributeError):
        model.no_such_attribute
    model.release()


def test_a_method_returns_a_handle_with_ref(any_env):
    model = any_env.execute(T, "make_model", (2,), ref=True)
    child = model.child.ref(5)
    assert isinstance(child, wetlite.RemoteObject) and child.scale == 7
    assert child.predict(1) == 7
    task = model.predict.submit(4)
    assert task.result(timeout=30) == 8
    also = any_env.submit(child, "predict", (3,), ref=True).result(timeout=30)      # a method, as a Task
    assert isinstance(also, wetlite.RemoteObject) and also.real == 21
    assert any_env.execute(child, "predict", (2,)) == 14


def test_handles_as_arguments_are_the_real_objects(any_env):
    a = any_env.execute(T, "make_model", (1,), ref=True)
    b = any_env.execute(T, "make_model", (2,), ref=True)
    assert any_env.execute(T, "use_model", (a, 5)) == 1005
    assert any_env.execute(T, "use_model", (), {"model": b, "x": 5}) == 1010
    assert any_env.execute(T, "scales", ([a, b, a],)) == [1, 2, 1]
    assert any_env.execute(T, "type_names", ([a, b],)) == ["Model", "Model"]
    assert any_env.execute(T, "scales", ({"a": a, "b": b},)) == {"a": 1, "b": 2}
    assert any_env.submit(T, "use_model", (b, 1)).result(timeout=30) == 1002


def test_several_handles_at_once(any_env):
    models = [any_env.execute(T, "make_model", (i,), ref=True) for i in range(20)]
    assert [m.predict(2) for m in models] == [2 * i for i in range(20)]
    for m in models[::2]:
        m.release()
    assert [m.predict(3) for m in models[1::2]] == [3 * i for i in range(1, 20, 2)]
    with pytest.raises(wetlite.ExecutorError, match="released"):
        models[0].predict(1)


def test_release_explicit_and_with(any_env):
    model = any_env.execute(T, "make_model", (1,), ref=True)
    model.release()
    model.release()                                 # idempotent
    with pytest.raises(wetlite.ExecutorError, match="released"):
        model.predict(1)
    with pytest.raises(wetlite.ExecutorError, match="released"):
        any_env.execute(T, "use_model", (model, 1))
    with any_env.execute(T, "make_model", (4,), ref=True) as other:
        assert other.predict(1) == 4
    with pytest.raises(wetlite.ExecutorError, match="released"):
        other.predict(1)


def test_unpicklable_result_suggests_ref(shared):
    with pytest.raises(wetlite.ExecutorError, match="ref=True"):
        shared.execute(T, "make_model", (1,))


# --- worker only: release in the worker, restarts, pickling ----------------------------

def test_release_and_garbage_collection_free_the_object_in_the_worker(fresh):
    env = fresh()
    kept = env.execute(T, "make_model", (1,), ref=True)
    dropped = env.execute(T, "make_model", (2,), ref=True)
    collected = env.execute(T, "make_model", (3,), ref=True)
    assert env.execute(T, "live_models") == 3
    ids = env.execute(T, "held_ids")
    assert sorted([kept._wl_id, dropped._wl_id, collected._wl_id]) == ids
    dropped.release()
    del collected
    gc.collect()
    assert env.execute(T, "held_ids") == [kept._wl_id]
    assert env.execute(T, "live_models") == 1
    assert kept.predict(2) == 2


def test_handle_after_the_worker_restarted_names_the_object_and_the_restart(fresh):
    env = fresh()
    model = env.execute(T, "make_model", (1,), ref=True)
    pid = env.execute("os", "getpid")
    with pytest.raises(wetlite.WorkerDied):
        env.execute(HELPERS, "kill_self", (9,))
    assert env.execute("os", "getpid") != pid           # restarted
    with pytest.raises(wetlite.ExecutorError) as info:
        model.predict(1)
    text = str(info.value)
    assert "task_helpers.Model" in text and str(pid) in text and "stopped" in text and "make the object again" in text
    with pytest.raises(wetlite.ExecutorError, match="stopped"):
        env.execute(T, "use_model", (model, 1))
    other = env.execute(T, "make_model", (2,), ref=True)
    env.exit()
    with pytest.raises(wetlite.ExecutorError, match="exit"):
        other.predict(1)


def test_a_handle_cannot_be_pickled_or_sent_to_another_environment(mgr, shared, fresh):
    model = shared.execute(T, "make_model", (1,), ref=True)
    with pytest.raises(wetlite.ExecutorError, match="cannot be pickled"):
        pickle.dumps(model)
    other = fresh()
    with pytest.raises(wetlite.ExecutorError, match="cannot be sent to the worker") as info:
        other.execute(T, "use_model", (model, 1))
    assert shared.name in str(info.value)
    with pytest.raises(wetlite.ExecutorError, match="belongs to environment"):
        other.execute(model, "predict", (1,))
    local = mgr.main_environment.execute(T, "make_model", (1,), ref=True)
    with pytest.raises(wetlite.ExecutorError, match="main_environment"):
        shared.execute(T, "use_model", (local, 1))
    # ... and a worker's handle into main_environment: an error, never None in its place
    main = mgr.main_environment
    for call in (lambda: main.execute(T, "use_model", (model, 1)),
                 lambda: main.execute(T, "scales", ([model],)),
                 lambda: main.execute(T, "use_model", (), {"model": model, "x": 1}),
                 lambda: main.submit(T, "use_model", (model, 1)).result(timeout=30),
                 lambda: main.execute(model, "predict", (1,)),
                 lambda: main.submit(model, "predict", (1,)).result(timeout=30)):
        with pytest.raises(wetlite.ExecutorError, match="belongs to environment %r" % shared.name):
            call()
    assert model.predict(3) == 3                    # still fine in its own environment


# --- module proxies (issue 10 item 7) ---------------------------------------------------

def test_module_attributes_are_read_by_value_in_one_round_trip(shared):
    import json
    mod = shared.import_module("json")
    ids = shared._worker._ids
    before = next(ids)
    assert mod.__version__ == json.__version__
    assert next(ids) == before + 2                  # one request
    assert isinstance(mod.__file__, str) and mod.__name__ == "json"
    assert mod.dumps([1]) == "[1]"


def test_remote_functions_have_doc_and_name_for_help(shared):
    import json
    mod = shared.import_module("json")
    assert mod.__doc__ == json.__doc__
    assert mod.dumps.__name__ == "dumps"
    assert mod.dumps.__doc__ == json.dumps.__doc__
    text = pydoc.render_doc(mod.dumps, renderer=pydoc.plaintext)
    assert "Serialize ``obj`` to a JSON formatted ``str``" in text
    helpers = shared.import_module(HELPERS)
    assert helpers.calc.scale(3) == 30              # a non-data object stays a proxy to call through
    os_mod = shared.import_module("os")
    assert os_mod.sep == os.sep and os_mod.path.join("a", "b") == os.path.join("a", "b")


def test_remote_function_ref_and_submit(any_env):
    mod = any_env.import_module(T)
    model = mod.make_model.ref(6)
    assert model.predict(1) == 6
    assert mod.Model.ref(2).doubled == 4
    assert mod.report_many.submit(4).result(timeout=30) == 4


# --- every local interpreter ------------------------------------------------------------

@pytest.mark.parametrize("version", ["3.6", "3.13"])
def test_handles_on_old_and_new_worker_pythons(mgr, tmp_path, version):
    path = venv_on_local_python(version, str(tmp_path / "venv"))
    env = mgr.load("remote%s" % version.replace(".", ""), path)
    try:
        model = env.execute(T, "make_model", (3,), ref=True)
        assert model.predict(2) == 6 and model.doubled == 6
        assert env.execute(T, "use_model", (model, 1)) == 1003
        assert model.child.ref(1).scale == 4
        model.release()
        assert env.import_module("json").__version__
    finally:
        env.exit()
