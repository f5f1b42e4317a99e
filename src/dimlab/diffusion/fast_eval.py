"""Faster network evaluations for sampling: bf16 autocast, CUDA-graph replay of ``fn(x, t_net) -> eps`` and a
compiled backbone.

A sampler calls the same network 50 times with the same shapes. Three things make those calls cheaper on a GPU:

* ``precision="bf16"`` runs the network under bf16 autocast (fp32 weights, bf16 matmuls and scan inputs), as the
  official evaluators do under accelerate's mixed precision; the solver's own arithmetic stays in fp32.
* ``cuda_graphs=True`` captures one call per input shape in a CUDA graph and replays it, so the ~7,000 kernel
  launches of a DiM-H/2 evaluation cost one launch. That is what matters at small batches and 256 px, where a DiM
  evaluation is launch-bound (benchmarks/RESULTS.md: DiM-H/2 at batch 1, 256 px, 42 -> 18 ms per evaluation).

* ``compile=True`` runs the backbone through ``torch.compile`` (:class:`CompiledNetwork`): with dimlab's Triton
  kernels registered as custom ops, Dynamo traces a whole DiM as one graph and Inductor fuses the norms, adaLN
  modulation, gates, casts, residual adds and scan-order gathers between the matmuls and the scan. It costs a
  compilation per input shape (tens of seconds for DiM-H/2), so it pays for many batches (FID), not for one grid.
  It combines with ``cuda_graphs``: the graph then records the compiled kernels.

Why CUDA graphs by hand rather than ``torch.compile(mode="reduce-overhead")``: with mamba-ssm's kernels Dynamo breaks
the graph at every kernel call, and with a break per block reduce-overhead captured little (benchmarks/RESULTS.md);
plain ``torch.cuda.CUDAGraph`` capture records the kernels themselves, whichever backend and with or without
compilation. ``torch.cuda.make_graphed_callables`` targets autograd (forward + backward); sampling needs the forward
alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

PRECISIONS = ("fp32", "bf16")


def with_precision(model_fn: ModelFn, precision: str, device: torch.device, graphs: bool = False) -> ModelFn:
    """``model_fn`` run under ``precision`` ("fp32": as is; "bf16": bf16 autocast), returning fp32.

    Under CUDA graphs autocast's weight-cast cache is turned off: cached casts made outside a capture would be
    freed when the autocast region ends while the graph still reads them.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return model_fn

    def bf16_fn(x: torch.Tensor, t_net: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=not graphs):
            out = model_fn(x, t_net)
        return out.to(x.dtype)

    return bf16_fn


class CudaGraphedModelFn:
    """``fn(x, t_net)`` replayed from CUDA graphs: one graph per input shape, captured at its first call.

    Upsample guidance calls the network at two resolutions; each gets its own graph, all in one memory pool.
    Every call copies its inputs into the graph's static buffers, replays, and returns a copy of the output (the
    static output is overwritten by the next replay). ``fn`` must not synchronise with the CPU (no ``.item()``,
    no data-dependent control flow): DiM and U-ViT forwards qualify. Graphs live as long as this object.
    """

    def __init__(self, fn: ModelFn, warmup: int = 2) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA device; sample without cuda_graphs on this machine")
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (lazy initialisation must not be captured), got {warmup}")
        self.fn = fn
        self.warmup = warmup
        self.graphs: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.cuda.CUDAGraph]] = {}
        self._pool = None

    def __call__(self, x: torch.Tensor, t_net: torch.Tensor | float) -> torch.Tensor:
        if x.device.type != "cuda":
            raise ValueError(f"CudaGraphedModelFn: x is on {x.device}, expected a CUDA device")
        t = torch.as_tensor(t_net, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        key = (tuple(x.shape), x.dtype, tuple(t.shape), t.dtype, x.device)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(x, t)
        static_x, static_t, static_out, graph = entry
        static_x.copy_(x)
        static_t.copy_(t)
        graph.replay()
        return static_out.clone()

    def _capture(self, x: torch.Tensor, t: torch.Tensor):
        """Warm up on a side stream (cuBLAS handles, index plans, lazy imports), then capture one call."""
        static_x, static_t = x.clone(), t.clone()
        current = torch.cuda.current_stream(x.device)
        side = torch.cuda.Stream(x.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(static_x, static_t)
        current.wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out = self.fn(static_x, static_t)
        return static_x, static_t, static_out, graph


#: How many input shapes one process may compile a backbone for (each costs its compilation, tens of seconds).
MAX_SHAPES = 256


class CompiledNetwork:
    """``net(x, t, y, **kwargs)`` through ``torch.compile``: one static graph per input shape (``dynamic=False``).

    The first call with a new input shape also runs ``net`` eagerly once, to fill the backbone's per-grid caches
    (DiM's scan-order index plans are built on the CPU, which inside a trace is data-dependent), so that the
    compiled call then traces the whole network as one graph (``fullgraph=True``: a graph break is an error rather
    than a silent slowdown). ``backend`` is Inductor unless named (``"aot_eager"`` traces without generating
    kernels, for tests on machines without a compiler).

    Every shape asked for gets its graph: Dynamo's ``recompile_limit`` (8 graphs per function by default, and
    under ``fullgraph`` a hard error beyond it) is raised to :data:`MAX_SHAPES` around the compiled call, since
    each static graph here is asked for, not an accident of changing shapes.
    """

    def __init__(self, net: nn.Module, backend: str = "inductor") -> None:
        self.net = net
        self.backend = backend
        self.compiled = torch.compile(net, backend=backend, fullgraph=True, dynamic=False)
        self._shapes: set[tuple] = set()

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kwargs
    ) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.device, tuple(sorted(kwargs)))
        if key not in self._shapes:
            self.net(x, t, y, **kwargs)
            self._shapes.add(key)
        limit = max(torch._dynamo.config.recompile_limit, MAX_SHAPES)
        with torch._dynamo.config.patch(recompile_limit=limit):
            return self.compiled(x, t, y, **kwargs)


def compile_backend(compile: bool | str) -> str | None:
    """The ``torch.compile`` backend a ``compile`` option names: None (off), "inductor" for True, or the string.

    ValueError for anything else (a typo such as ``compile="yes"`` is not a backend torch knows, which torch itself
    would only report at the first network call).
    """
    if compile is False or compile is None:
        return None
    if compile is True:
        return "inductor"
    backends = torch.compiler.list_backends(exclude_tags=())
    if isinstance(compile, str) and compile in backends:
        return compile
    raise ValueError(
        f"compile must be True, False or a torch.compile backend ({', '.join(sorted(backends))}), got {compile!r}"
    )


def fast_model_fn(
    model_fn: ModelFn, device: torch.device, precision: str = "fp32", cuda_graphs: bool = False
):
    """``model_fn`` with ``precision`` applied and, with ``cuda_graphs``, replayed from CUDA graphs."""
    if cuda_graphs and torch.device(device).type != "cuda":
        raise ValueError(f"cuda_graphs needs a CUDA device, but the model is on {device}")
    fn = with_precision(model_fn, precision, torch.device(device), graphs=cuda_graphs)
    return CudaGraphedModelFn(fn) if cuda_graphs else fn
