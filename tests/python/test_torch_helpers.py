"""``vramcap.torch_unloader`` and ``torch_reloader`` in this process, with the tests' stand-in torch
(tests/python/stub/torch) in place of PyTorch."""

import gc
import importlib
import sys
from pathlib import Path

import pytest

import vramcap

STUB = str(Path(__file__).parent / "stub")


@pytest.fixture
def torch(monkeypatch):
    monkeypatch.syspath_prepend(STUB)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    t = importlib.import_module("torch")
    assert t.__file__.startswith(STUB), t.__file__
    t.calls.clear()
    t.initialized = True
    return t


class Model:
    """Records, in the same list as the stub's calls, when it is collected."""

    def __init__(self, log):
        self.log = log

    def __del__(self):
        self.log.append("collected")


class App:
    pass


def test_the_unloader_drops_the_model_then_empties_the_cache(torch):
    app = App()
    app.model = Model(torch.calls)
    unload = vramcap.torch_unloader(app, "model")
    assert torch.calls == []
    unload()
    assert app.model is None
    assert torch.calls == ["collected", "synchronize", "empty_cache"]
    unload()  # again: nothing to drop, the cache is emptied once more
    assert torch.calls[3:] == ["synchronize", "empty_cache"]


def test_a_dict_holds_the_model_as_well(torch):
    models = {"chat": Model(torch.calls)}
    vramcap.torch_unloader(models, "chat")()
    assert models == {"chat": None}
    assert torch.calls == ["collected", "synchronize", "empty_cache"]


def test_a_model_still_referenced_elsewhere_is_an_error_that_says_so(torch):
    app = App()
    app.model = Model(torch.calls)
    elsewhere = [app.model]
    with pytest.raises(RuntimeError, match="'model' was dropped but the model is still referenced"):
        vramcap.torch_unloader(app, "model")()
    assert app.model is None
    assert torch.calls == ["synchronize", "empty_cache"], "the cache is emptied all the same"
    del elsewhere
    gc.collect()


def test_without_cuda_initialised_nothing_is_asked_of_torch(torch):
    torch.initialized = False
    app = App()
    app.model = Model(torch.calls)
    vramcap.torch_unloader(app, "model")()
    assert torch.calls == ["collected"]


def test_torch_is_imported_only_when_the_unloader_runs(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    app = App()
    app.model = object()
    unload = vramcap.torch_unloader(app, "model")  # no import yet
    with pytest.raises(ImportError, match="torch_unloader: cannot import torch"):
        unload()


def test_the_reloader_loads_only_into_an_empty_slot(torch):
    app = App()
    app.model = None
    loads = []

    def load():
        loads.append(1)
        return Model(torch.calls)

    reload = vramcap.torch_reloader(app, "model", load)
    reload()
    first = app.model
    assert isinstance(first, Model) and loads == [1]
    reload()
    assert app.model is first and loads == [1]


def test_bad_arguments_name_the_value():
    with pytest.raises(TypeError, match="holder=None holds nothing"):
        vramcap.torch_unloader(None, "model")
    with pytest.raises(TypeError, match="attr='not a name' is not an attribute name"):
        vramcap.torch_unloader(App(), "not a name")
    with pytest.raises(TypeError, match="load=3 is not callable"):
        vramcap.torch_reloader(App(), "model", 3)


def test_the_unloader_serves_as_an_endpoint_callback(torch):
    import http.client

    app = App()
    app.model = Model(torch.calls)
    with vramcap.serve_unload(vramcap.torch_unloader(app, "model"), port=0) as s:
        c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        c.request("POST", "/unload", body=b"")
        assert c.getresponse().status == 200
        c.close()
    assert torch.calls == ["collected", "synchronize", "empty_cache"]
