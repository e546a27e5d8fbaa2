"""Shared pieces of the gradient-based learners (MAML and its family).

Parameters are handled functionally, as in TorchOpt/optax: the network is called on a dict of
tensors, and the inner loop (:mod:`metakit.inner`, shared with MeLU and MAML-RL) returns a *new*
dict. No layer is rewritten and no ``.fast`` attribute is attached, so any ``nn.Module`` backbone
works unmodified and ``torch.distributed`` sees ordinary parameters. A backbone that is an
``nn.Sequential`` of standard layers (Conv-4, the MLP) runs through
:func:`metakit.learners.fastpath.forward`, any other through ``torch.func.functional_call``; both
compute the module's own function.

BatchNorm follows MAML's transductive convention: every forward pass normalises with the batch's
own statistics (support batch in the inner loop, query batch when predicting), in training and at
test time alike; running statistics are not kept. Each task runs in its own forward passes (a
per-task loop), which keeps second-order meta-gradients exact with BatchNorm in the model —
``torch.func.vmap`` over tasks does not (its batch-norm second derivatives are wrong).

On CPU, :meth:`GradientLearner.meta_step` computes each task's meta-gradient separately (memory:
one task's graph, not the meta-batch's) and runs the tasks in parallel threads; see
:mod:`metakit.learners.fastpath` for why that and the reordered image layer are the fastest exact
choice measured on CPU.
"""

from __future__ import annotations

import math

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

from metakit import inner
from metakit.episodes import Episode, MetaBatch
from metakit.errors import MetakitError
from metakit.learners import fastpath
from metakit.learners.base import Learner, Predictor, TaskInfo, check_finite

Params = dict[str, torch.Tensor]
#: The choices of :class:`GradientLearner`'s ``head_init``.
HEAD_INITS = ("learned", "zero", "prototypes")


def use_batch_statistics(module: nn.Module) -> None:
    """Make every BatchNorm layer in ``module`` normalise with batch statistics, always."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
            m.num_batches_tracked = None


def select_parameters(module: nn.Module, prefixes: Sequence[str] | None) -> list[str]:
    """Names of ``module``'s parameters that start with one of ``prefixes`` (all when ``None``).

    A prefix that matches nothing is a config error: it names the parameters that exist.
    """
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    if prefixes is None:
        return names
    chosen = []
    for prefix in prefixes:
        hits = [n for n in names if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            tops = sorted({n.rsplit(".", 1)[0] for n in names})
            raise MetakitError(
                f"no parameter named {prefix!r} in the model; adaptable parameter groups are: {', '.join(tops)}."
            )
        chosen += [h for h in hits if h not in chosen]
    return chosen


class GradientLearner(Learner):
    """A backbone plus a linear head whose (selected) parameters adapt by gradient descent.

    Args:
        backbone: feature extractor.
        task: task description (sizes the head).
        inner_lr: inner-loop step size (> 0).
        inner_steps: inner-loop steps during meta-training (>= 0).
        eval_inner_steps: inner-loop steps at evaluation (default: ``inner_steps``).
        first_order: drop second-order terms (first-order MAML).
        adapt: parameter-name prefixes adapted in the inner loop (default: all), e.g. ``["head"]``.
        head_init: where each task's linear head starts its inner loop (classification):

            - ``"learned"`` (MAML): the meta-learned head. Class ``i`` of a new task lands on
              whichever output row ``i`` was trained for, which carries no meaning across tasks,
              so the learned initialisation can only be a compromise over label permutations
              (Ye & Chao, ICLR 2022).
            - ``"zero"``: a zero head for every task, the same for every class ("zeroing trick",
              Kao et al., ICLR 2022): every label permutation starts alike.
            - ``"prototypes"`` (Proto-MAML, Triantafillou et al., ICLR 2020): row ``c`` is ``2 p_c``
              and its bias ``-|p_c|^2``, with ``p_c`` the mean support feature of class ``c``, so
              the inner loop starts from the ProtoNet classifier (squared Euclidean distance) and
              the meta-gradient flows through the prototypes into the backbone.
        head_scale: with ``head_init: prototypes``, a meta-learned scale ``s`` on the prototype
            head (this is its starting value; ``None`` keeps the plain head). The logits start as
            ``s (2 p_c . x - |p_c|^2)``: the argmax stays ProtoNet's, but ``s`` sets how sure the
            starting head is, and with it how far the inner steps move it, so the outer loop
            learns how much a task's few examples should change the classifier (a learned
            temperature, as in TADAM's metric scaling, Oreshkin et al., NeurIPS 2018).

    Subclasses take ``**options`` and pass them on here, so these options are every learner's of
    the family without being declared again; :func:`metakit.config.call_with_options` checks
    options against the whole chain of constructors.
    """

    task_types = ("classification", "regression")
    #: Options of a parent constructor that a subclass passes itself (FOMAML's ``first_order``):
    #: :func:`metakit.config.call_with_options` does not offer them, so setting one is an unknown
    #: option rather than a clash of keyword arguments.
    fixed_options: tuple[str, ...] = ()

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
        adapt: Sequence[str] | None = None,
        head_init: str = "learned",
        head_scale: float | None = None,
    ) -> None:
        super().__init__(backbone, task)
        if not isinstance(inner_lr, (int, float)) or inner_lr <= 0:
            raise MetakitError(f"inner_lr must be > 0, got {inner_lr!r}.")
        for label, steps in (("inner_steps", inner_steps), ("eval_inner_steps", eval_inner_steps)):
            if steps is not None and (not isinstance(steps, int) or steps < 0):
                raise MetakitError(f"{label} must be an integer >= 0, got {steps!r}.")
        outputs = (task.max_ways or task.ways) if task.task_type == "classification" else task.output_dim
        self.head = nn.Linear(backbone.out_dim, outputs)
        use_batch_statistics(self.backbone)
        self.inner_lr = float(inner_lr)
        self.inner_steps = inner_steps
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.first_order = first_order
        self.adapted = select_parameters(self, adapt)
        if head_init not in HEAD_INITS:
            raise MetakitError(f"head_init must be one of {', '.join(HEAD_INITS)}, got {head_init!r}.")
        if head_init != "learned":
            if task.task_type != "classification":
                raise MetakitError(f"head_init={head_init} is for classification; regression keeps head_init=learned.")
            if not {"head.weight", "head.bias"} <= set(self.adapted):
                raise MetakitError(f"head_init={head_init} starts the head per task, so the head must adapt: "
                                   "add 'head' to the learner's adapt list.")
        self.head_init = head_init
        if head_scale is not None:
            if head_init != "prototypes":
                raise MetakitError(f"head_scale scales the prototype head; it needs head_init=prototypes, not {head_init}.")
            if not isinstance(head_scale, (int, float)) or isinstance(head_scale, bool) or head_scale <= 0:
                raise MetakitError(f"head_scale must be a number > 0, got {head_scale!r}.")
            # Registered after ``adapted`` is chosen: an outer-loop parameter, never moved by the inner loop.
            self.head_log_scale = nn.Parameter(torch.tensor(math.log(head_scale)))

    # -- functional forward -------------------------------------------------------------------

    def parameters_dict(self) -> Params:
        """The adapted parameters as a name -> tensor dict (the inner loop's starting point)."""
        own = dict(self.named_parameters())
        return {n: own[n] for n in self.adapted}

    def forward_with(self, params: Params, x: torch.Tensor, ways: int | None = None) -> torch.Tensor:
        """Outputs of the network with ``params`` replacing the parameters of the same name."""
        return self.head_forward(params, self.features_with(params, x), ways)

    def features_with(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Backbone features of ``x`` with the ``backbone.*`` entries of ``params`` in place."""
        backbone = {k[len("backbone."):]: v for k, v in params.items() if k.startswith("backbone.")}
        layers = self._layers()
        if layers is not None:  # thread-safe, and faster on CPU; the same function
            return fastpath.forward(layers, {**dict(self.backbone.named_parameters()), **backbone}, x)
        if backbone:
            return functional_call(self.backbone, backbone, (x,), strict=False)
        return self.backbone(x)

    def start_params(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int,
                     features: torch.Tensor | None = None) -> Params:
        """Where a task's inner loop starts: the meta-parameters, with the head set by ``head_init``.

        ``features`` are the support features when the caller has them (ANIL computes them once).
        """
        params = self.parameters_dict()
        if self.head_init == "learned":
            return params
        weight, bias = self.head.weight, self.head.bias
        rows, dim = weight.shape
        if self.head_init == "zero":
            head_w = weight.new_zeros(rows, dim, requires_grad=True)
            head_b = bias.new_zeros(rows, requires_grad=True)
        else:
            feats = self.features_with(params, support_x) if features is None else features
            feats = feats.flatten(1)
            onehot = nn.functional.one_hot(support_y, ways).to(feats.dtype)
            protos = onehot.T @ feats / onehot.sum(0).clamp_min(1).unsqueeze(1)
            # Rows past this task's ways are never read (head_forward keeps the first ``ways``);
            # zeros keep the head's full shape, which per-parameter step sizes (Meta-SGD) index.
            scale = self.head_log_scale.exp() if hasattr(self, "head_log_scale") else 1.0
            head_w = torch.cat([scale * 2 * protos, weight.new_zeros(rows - ways, dim)])
            head_b = torch.cat([-scale * (protos * protos).sum(1), bias.new_zeros(rows - ways)])
            if not head_w.requires_grad:  # a frozen backbone: the head still needs an inner gradient
                head_w, head_b = head_w.detach().requires_grad_(), head_b.detach().requires_grad_()
        return {**params, "head.weight": head_w, "head.bias": head_b}

    def head_forward(self, params: Params, features: torch.Tensor, ways: int | None) -> torch.Tensor:
        """The linear head with (possibly adapted) ``params``, restricted to the first ``ways`` classes."""
        weight = params.get("head.weight", self.head.weight)
        bias = params.get("head.bias", self.head.bias)
        if ways is not None and self.task.task_type == "classification":
            if ways > weight.shape[0]:
                raise MetakitError(f"{ways}-way episodes but the head has {weight.shape[0]} outputs; set eval/training ways consistently.")
            weight, bias = weight[:ways], bias[:ways]
        return nn.functional.linear(features, weight, bias)

    # -- the inner loop -----------------------------------------------------------------------

    def step_sizes(self, step: int) -> inner.StepSize:
        """The inner learning rate(s) of inner step ``step`` (MAML: one scalar for every parameter)."""
        return self.inner_lr

    def inner_update(self, params: Params, loss: torch.Tensor, step: int, create_graph: bool) -> Params:
        """One inner step on ``loss`` for callers that drive their own loop (continual evaluation).

        ``create_graph`` keeps it differentiable (second order).
        """
        return inner.step(params, loss, self.step_sizes(step), first_order=not create_graph)

    def support_loss(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> inner.LossFn:
        """The inner loss on the support set, as a function of the adapted parameters."""
        return lambda params, _step: self.loss(self.forward_with(params, support_x, ways), support_y)

    def inner_loop(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int, steps: int) -> list[Params]:
        """Adapt from the meta-parameters; returns the parameters after each step (index 0 = start)."""
        return inner.trajectory(self.start_params(support_x, support_y, ways), self.support_loss(support_x, support_y, ways), steps,
                                self.step_sizes, first_order=not self.training or self.first_order)

    def run_inner(self, params: Params, loss_fn: inner.LossFn) -> Params:
        """:func:`metakit.inner.adapt` with this learner's settings.

        Training: ``inner_steps`` steps, second order unless ``first_order``. Evaluation:
        ``eval_inner_steps`` first-order steps, the result detached (no meta-gradient is taken).
        """
        if not self.training:
            adapted = inner.adapt(params, loss_fn, self.eval_inner_steps, self.step_sizes, first_order=True)
            return {k: v.detach() for k, v in adapted.items()}
        return inner.adapt(params, loss_fn, self.inner_steps, self.step_sizes, first_order=self.first_order)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Predictor:
        """Run the inner loop on the support set; predict with the adapted parameters."""
        params = self.run_inner(self.start_params(support_x, support_y, ways), self.support_loss(support_x, support_y, ways))
        return lambda query_x: self.forward_with(params, query_x, ways)

    # -- meta-training --------------------------------------------------------------------------

    def meta_step(self, batch: MetaBatch) -> dict[str, float]:
        """The meta-gradient into ``.grad``, one task at a time (on CPU, tasks in parallel threads).

        Each task's gradient is computed and its graph freed on its own (peak memory: one task's
        graph per worker instead of the whole meta-batch's) and the gradients are summed in task
        order, so the result does not depend on the number of threads. The meta-gradient is the
        one ``meta_loss(batch)[0].backward()`` gives, up to rounding. Learners that define their
        own ``meta_loss``, and meta-batches off the CPU (where this was not measured), keep exactly
        that.
        """
        if type(self).meta_loss is not Learner.meta_loss:
            return super().meta_step(batch)
        mode = self.task_mode(batch)
        if mode == "grouped":
            return self._grouped_meta_step(batch)
        if mode == "loop" and batch.support_x.device.type != "cpu":
            return super().meta_step(batch)
        params = [p for p in self.parameters() if p.requires_grad]

        def task(episode: Episode) -> tuple[torch.Tensor, float, tuple[torch.Tensor | None, ...]]:
            out = self.adapt(episode.support_x, episode.support_y, episode.ways)(episode.query_x)
            loss = self.loss(out, episode.query_y)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            return loss.detach(), self.score(out.detach(), episode.query_y), grads

        results = fastpath.map_tasks(task, list(batch.tasks()), mode == "threads")
        loss = torch.stack([r[0] for r in results]).mean()
        check_finite(loss)
        n = len(results)
        for i, p in enumerate(params):
            grads = [r[2][i] for r in results if r[2][i] is not None]
            if grads:
                g = torch.stack(grads).sum(0) / n
                p.grad = g if p.grad is None else p.grad + g
        return {"loss": loss.item(), self.metric: sum(r[1] for r in results) / n}

    #: How :meth:`meta_step` runs the tasks of a meta-batch, all exact to rounding:
    #:
    #: - ``"threads"``: task by task, spread over worker threads (the fastest measured on CPU);
    #: - ``"grouped"``: all tasks in one network, :func:`fastpath.forward_tasks` (the fastest
    #:   measured on GPU), ``task_chunk`` tasks at a time;
    #: - ``"loop"``: task by task in order, in this thread;
    #: - ``"auto"`` (default): ``"threads"`` on CPU, ``"grouped"`` elsewhere, where supported.
    #:
    #: ``threads`` and ``grouped`` need the per-task computation to be this class's own and a
    #: backbone :func:`fastpath.plan` can run; otherwise the learner falls back to ``"loop"``.
    #: ``benchmarks/maml_throughput.py --modes`` times them on the machine at hand.
    task_batching: str = "auto"
    #: Tasks per grouped forward (``None``: the whole meta-batch). Bounds memory on large batches.
    task_chunk: int | None = None

    def task_mode(self, batch: MetaBatch) -> str:
        """The way :meth:`meta_step` will run ``batch``'s tasks (see :attr:`task_batching`)."""
        if self.task_batching not in ("auto", "threads", "grouped", "loop"):
            raise MetakitError(f"task_batching must be auto, threads, grouped or loop, got {self.task_batching!r}.")
        fast = self._own_task_code() and self._layers() is not None
        if not fast or self.task_batching == "loop":
            return "loop"
        # The grouped path expands the meta-learned head over tasks; a per-task head start is not
        # written for it, so those learners run task by task.
        groupable = batch.batched and self.head_init == "learned"
        if self.task_batching == "auto":
            return "threads" if batch.support_x.device.type == "cpu" else ("grouped" if groupable else "loop")
        if self.task_batching == "grouped" and not groupable:
            return "loop"
        return self.task_batching

    # -- all tasks at once ----------------------------------------------------------------------

    def _grouped_meta_step(self, batch: MetaBatch) -> dict[str, float]:
        """The meta-gradient with every task of a chunk in one network (:func:`fastpath.forward_tasks`).

        Each parameter carries a leading task dimension (the meta-parameters expanded, then each
        task's own adapted values); task ``t``'s outputs depend on slice ``t`` only, so the gradient
        of the *sum* of per-task losses gives every task its own inner gradient.
        """
        total = batch.num_tasks
        chunk = self.task_chunk or total
        losses, scores = [], []
        for start in range(0, total, chunk):
            part = slice(start, min(start + chunk, total))
            sx, sy, qx, qy = batch.support_x[part], batch.support_y[part], batch.query_x[part], batch.query_y[part]
            tasks = sx.shape[0]
            start = {n: p.expand(tasks, *p.shape) for n, p in self.parameters_dict().items()}
            params = inner.adapt(start, self._grouped_support_loss(sx, sy, batch.ways), self.inner_steps,
                                 self.step_sizes, first_order=self.first_order)
            out = self._grouped_forward(params, qx, batch.ways).flatten(0, 1)
            loss = self.loss(out, qy.flatten(0, 1))  # equal-sized tasks: the mean of per-task means
            check_finite(loss)
            (loss * (tasks / total)).backward()
            losses.append(loss.detach() * tasks)
            scores.append(self.score(out.detach(), qy.flatten(0, 1)) * tasks)
        return {"loss": (torch.stack(losses).sum() / total).item(), self.metric: sum(scores) / total}

    def _grouped_support_loss(self, sx: torch.Tensor, sy: torch.Tensor, ways: int) -> inner.LossFn:
        """The sum of the tasks' mean support losses: its gradient gives every task its own inner gradient."""
        tasks = sx.shape[0]
        return lambda params, _step: self.loss(self._grouped_forward(params, sx, ways).flatten(0, 1), sy.flatten(0, 1)) * tasks

    def _grouped_forward(self, params: Params, x: torch.Tensor, ways: int) -> torch.Tensor:
        """Every task's outputs ``[T, n, out]`` with per-task ``params`` (``[T, ...]`` each)."""
        tasks = x.shape[0]
        full = {n: params.get(n, p.expand(tasks, *p.shape)) for n, p in self.named_parameters()}
        backbone = {n[len("backbone."):]: v for n, v in full.items() if n.startswith("backbone.")}
        features = fastpath.forward_tasks(self._layers(), backbone, x).flatten(2)
        weight, bias = full["head.weight"], full["head.bias"]
        if self.task.task_type == "classification":
            weight, bias = weight[:, :ways], bias[:, :ways]
        return fastpath.linear_tasks(features, weight, bias)

    def _own_task_code(self) -> bool:
        """Whether the per-task computation is this class's (no subclass changes it)."""
        cls = type(self)
        return all(
            getattr(cls, name) is getattr(GradientLearner, name)
            for name in ("adapt", "run_inner", "support_loss", "inner_loop", "inner_update", "forward_with", "head_forward",
                         "start_params", "features_with",
                         "loss", "score")
        )

    def _layers(self) -> list[fastpath.Layer] | None:
        """The backbone's :func:`fastpath.plan` (computed once)."""
        if "_plan" not in self.__dict__:
            self.__dict__["_plan"] = fastpath.plan(self.backbone)
        return self.__dict__["_plan"]
