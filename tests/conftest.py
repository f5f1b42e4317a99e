"""Shared pytest configuration: GPU / CUDA-kernel tests skip cleanly on machines without them."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from dimlab.data.digits import write_digits_shards

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_SPEC = REPO_ROOT.parent / "shared" / "spec"

# Tests never touch the network: W&B runs offline and hubs are told to stay local.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Without a GPU the Triton kernels run in Triton's CPU interpreter. It is chosen when a kernel is defined, i.e.
# when dimlab.kernels is first imported, so it must be set before any test imports it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _have_kernels() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("mamba_ssm", "causal_conv1d"))


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    has_kernels = has_cuda and _have_kernels()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_kernels = pytest.mark.skip(reason="needs mamba-ssm and causal-conv1d CUDA kernels (`make kernels`)")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        elif "cuda_kernels" in item.keywords and not has_kernels:
            item.add_marker(skip_kernels)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Keep CPU tests predictable on the 2-core CI machine (and fast: subnormals flushed, as dimlab's CLI does)."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    torch.set_flush_denormal(True)
    yield


#: What Lightning / torch.distributed write into os.environ when a test initialises a process group in-process.
_DISTRIBUTED_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "NODE_RANK",
    "GROUP_RANK",
)


@pytest.fixture(autouse=True)
def _isolate_distributed_state():
    """Undo what an in-process distributed run leaves behind: its process group and its rendezvous variables.

    Lightning's DDP/FSDP strategies set MASTER_PORT etc. in ``os.environ`` and keep the process group (and the
    TCPStore listening on that port) alive after ``fit``. Every later subprocess would inherit MASTER_PORT and fail
    to listen on it (EADDRINUSE; seen on 2 H100s when the 2-GPU tests ran after the 1-GPU FSDP test).
    """
    saved = {k: os.environ.get(k) for k in _DISTRIBUTED_ENV}
    yield
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def shared_spec() -> Path:
    """Path of ../shared/spec (read-only reference material beside the clone); skips when it is absent."""
    if not SHARED_SPEC.is_dir():
        pytest.skip(f"reference material not found at {SHARED_SPEC}")
    return SHARED_SPEC


@pytest.fixture(scope="session")
def digit_shards(tmp_path_factory):
    """``digit_shards(size=8, shard_size=200, **options) -> Path``: scikit-learn's digits as train/val shards.

    The one digits-shard helper of every test folder: each setting is written once per session (8 px: 1617 train
    and 180 val samples); ``options`` go to :func:`dimlab.data.digits.write_digits_shards`. Treat the folder as
    read-only (copy it to corrupt it).
    """
    written: dict[tuple, Path] = {}

    def get(size: int = 8, shard_size: int = 200, **options) -> Path:
        key = (size, shard_size, tuple(sorted(options.items())))
        if key not in written:
            out = tmp_path_factory.mktemp(f"digits{size}")
            write_digits_shards(out, size=size, shard_size=shard_size, **options)
            written[key] = out
        return written[key]

    return get
