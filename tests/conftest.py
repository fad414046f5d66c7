# Triton reads TRITON_INTERPRET when a kernel is defined, so this must run before anything
# imports triton. Without a GPU the interpreter runs the real Triton kernels on the CPU.
import os

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("TRITON_INTERPRET") == "1":
    from svm_kernels import interpreter_speed

    interpreter_speed.install()

import pytest
import torch
import xdist_groups

DEVICE = "cuda" if _HAS_CUDA else "cpu"

# Fixtures live here; the plain helpers the tests import (``from helpers import ...``: the SMALL
# table of tiny models, ``tiny_model(name)``, ``images``, relative-error comparisons) in helpers.py.

# Under pytest-xdist (``pytest -n auto``) every worker is a process of its own: intra-op threads
# beyond each worker's share of the cores only oversubscribe them (OpenMP spins), so a worker
# keeps its share.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_torch_function_mode_left_on():
    """A test that leaves a torch function mode on (a default device, say) changes every later
    test on its worker: torch.compile of the models fails under one with torch 2.11."""
    yield
    left = torch._C._len_torch_function_stack()
    if left:  # taken off first, so that only this test fails (a default device through its own API)
        torch.set_default_device(None)
        while torch._C._len_torch_function_stack():
            torch._C._pop_torch_function_stack()
    assert left == 0, "the test left a torch function mode on"


@pytest.fixture
def kernel_device():
    """Kernel tests create their tensors on the GPU when there is one (bench/gpu_check.sh).

    Without one, nothing is set: ``set_default_device("cpu")`` pushes a device mode of its own,
    which would then stay over every later test (and stops torch 2.11's Dynamo, the GPU image's,
    from tracing the models). ``None`` takes the mode off again."""
    if DEVICE == "cpu":
        yield DEVICE
        return
    torch.set_default_device(DEVICE)
    try:
        yield DEVICE
    finally:
        torch.set_default_device(None)


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's
    spinning makes two threads many times slower than one (use with ``usefixtures``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- pytest-xdist: tests of one ``xdist_group`` on one worker (see xdist_groups.py) ----------


def pytest_collection_modifyitems(config, items):
    xdist_groups.record_groups(config, items)


def pytest_unconfigure(config):
    xdist_groups.cleanup(config)


try:
    import xdist  # noqa: F401
except ImportError:  # the hooks below exist only with pytest-xdist
    pass
else:

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(config, log):
        return xdist_groups.make_scheduler(config, log)

    def pytest_configure_node(node):
        xdist_groups.configure_node(node.config, node)
