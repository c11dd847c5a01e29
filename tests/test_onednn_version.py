"""Which oneDNN versions the ctypes binding accepts: 3.2 always; a later 3.x only when the
library is named with NETDSL_DNNL_LIB (docs/performance.md, "The oneDNN build"); never 4.x.
The library is a stand-in (no oneDNN needed): it reports a version and refuses to create an
engine, so a test sees whether loading got past the version check."""
import ctypes

import pytest

from netdsl.runtime.kernels.onednn import capi


class FakeFunc:
    def __init__(self, result):
        self.result = result

    def __call__(self, *args):
        return self.result


class FakeDll:
    """dnnl_version() reports ``version``; every other call returns status 2 (out of memory)."""

    def __init__(self, version):
        self.version = capi.Version(*version, b"x", 1, 0)

    def __getattr__(self, name):
        if name == "dnnl_version":
            f = FakeFunc(ctypes.pointer(self.version))
        else:
            f = FakeFunc(2)
        setattr(self, name, f)   # ctypes-style: restype/argtypes are set on the same object
        return f


def load(monkeypatch, version, env):
    monkeypatch.setattr(capi.ctypes, "CDLL", lambda path, mode=0: FakeDll(version))
    if env:
        monkeypatch.setenv("NETDSL_DNNL_LIB", "libdnnl_fake.so.3")
    else:
        monkeypatch.delenv("NETDSL_DNNL_LIB", raising=False)
        monkeypatch.setattr(capi, "_candidates", lambda: ["libdnnl_fake.so.3"])
    return capi.Lib()


@pytest.mark.parametrize("env", [False, True])
def test_3_2_passes_the_version_check(monkeypatch, env):
    with pytest.raises(capi.DnnlError, match="dnnl_engine_create"):
        load(monkeypatch, (3, 2, 0), env)


def test_a_later_3x_only_when_named(monkeypatch):
    with pytest.raises(OSError, match="oneDNN 3.13 found.*NETDSL_DNNL_LIB"):
        load(monkeypatch, (3, 13, 2), env=False)
    with pytest.raises(capi.DnnlError, match="dnnl_engine_create"):
        load(monkeypatch, (3, 13, 2), env=True)


@pytest.mark.parametrize("version", [(4, 0, 0), (3, 1, 0), (2, 7, 0)])
def test_other_majors_and_older_refused(monkeypatch, version):
    with pytest.raises(OSError, match=f"oneDNN {version[0]}.{version[1]} found"):
        load(monkeypatch, version, env=True)
