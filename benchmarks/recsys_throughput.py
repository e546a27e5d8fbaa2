"""Users per second of the recsys meta-learners: meta-training and adaptation, grouped against one user at a time.

Every meta-learner of metakit recsys handles a meta-batch of users as one grouped computation
(a leading task dimension on the per-user tensors, ragged sets padded with a mask). This prints,
for MeLU-1, MeLU-5 (second order), meta-MF and TaNP, the users per second of

* **training**: one epoch of meta-batches over the training users (forward, backward, Adam step);
* **adaptation**: predicting every new user's query ratings from its support ratings (MeLU and
  meta-MF take their inner gradient steps, TaNP runs its encoder);

and, for MeLU-5 training, the same epoch one user at a time (``meta_batch=1``), which is what
grouping saves.

    python benchmarks/recsys_throughput.py --root /path/to/folder/with/ml-100k --threads 1
    python benchmarks/recsys_throughput.py --threads 1     # synthetic ratings of ML-100K's size
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from metakit.recsys.config import load_recsys_config
from metakit.recsys.experiment import _metamf, _net, _tanp, load_ratings
from metakit.recsys.melu import Features, make_batch, meta_loss, predict_tasks
from metakit.recsys.metamf import meta_loss as metamf_loss
from metakit.recsys.metamf import predict_metamf, random_support_size
from metakit.recsys.tanp import TaNPTraining, predict_tanp, tanp_loss
from metakit.recsys.tasks import build_split, temporal_training_task, training_task
from metakit.utils import set_threads


def timed(fn: Callable[[], None], repeats: int) -> float:
    """Best wall time of ``repeats`` calls (the least disturbed by other jobs on a shared machine)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="folder with MovieLens-100K (else synthetic ratings of its size)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    overrides = [f"threads={args.threads}"]
    overrides += [f"data.root={args.root}"] if args.root else [
        "data.source=synthetic", "data.format=ml-100k", "data.synthetic.users=943", "data.synthetic.items=1682"]
    config = load_recsys_config("configs/recsys-ml100k.yaml", overrides)
    threads = set_threads(config.threads)
    data = load_ratings(config)
    split = build_split(data, config.tasks)
    features = Features.from_data(data)
    mu = float(split.train_rating.mean())
    rng = np.random.default_rng(0)
    users = sorted(split.train_by_user)
    random_tasks = [t for t in (training_task(split, u, config.tasks, rng) for u in users) if t is not None]
    timed_tasks = [random_support_size(t, rng, True) for t in
                   (temporal_training_task(split, u, config.tasks, rng) for u in users) if t is not None]
    test = split.scenarios["new_users"]
    B = args.meta_batch
    print(f"{data.describe()}; {len(users)} training users, {len(test)} new users; {threads} thread(s), "
          f"meta-batch {B}, best of {args.repeats}")

    def epoch(loss_fn: Callable[[list], torch.Tensor], params: list[torch.Tensor], tasks: list, batch: int) -> Callable[[], None]:
        opt = torch.optim.Adam(params, lr=1e-4)

        def run() -> None:
            for start in range(0, len(tasks), batch):
                opt.zero_grad()
                loss_fn(tasks[start:start + batch]).backward()
                opt.step()
        return run

    rows = []
    for steps in (1, 5):
        torch.manual_seed(0)
        net = _net(config, features, mu)

        def melu_loss(part: list, net=net, steps=steps) -> torch.Tensor:  # noqa: ANN001
            u = [t.user for t in part]
            s = make_batch(features, u, [t.support_items for t in part], [t.support_ratings for t in part])
            q = make_batch(features, u, [t.query_items for t in part], [t.query_ratings for t in part])
            return meta_loss(net, s, q, steps, config.melu.local_lr, first_order=False)

        train = timed(epoch(melu_loss, list(net.parameters()), random_tasks, B), args.repeats)
        adapt = timed(lambda net=net, steps=steps: predict_tasks(net, features, test, steps, config.melu.local_lr), args.repeats)
        rows.append((f"MeLU-{steps}", len(random_tasks) / train, len(test) / adapt))
        if steps == 5:
            single = timed(epoch(melu_loss, list(net.parameters()), random_tasks, 1), 1)
            rows.append(("MeLU-5, one user at a time", len(random_tasks) / single, float("nan")))
    torch.manual_seed(0)
    mf = _metamf(features, config.metamf.factors[0], config.metamf.steps, config.metamf.init_lr, mu)
    mf.mark_trained(split.train_item)
    train = timed(epoch(lambda part: metamf_loss(mf, features, part, part), list(mf.parameters()), timed_tasks, B),
                  args.repeats)
    adapt = timed(lambda: predict_metamf(mf, features, test), args.repeats)
    rows.append((f"meta-MF (k={config.metamf.factors[0]}, {config.metamf.steps} steps)", len(timed_tasks) / train,
                 len(test) / adapt))
    torch.manual_seed(0)
    tanp = _tanp(config, features, mu)
    cfg = TaNPTraining()
    train = timed(epoch(lambda part: tanp_loss(tanp, features, part, cfg), list(tanp.parameters()), timed_tasks, B),
                  args.repeats)
    adapt = timed(lambda: predict_tanp(tanp, features, test), args.repeats)
    rows.append(("TaNP", len(timed_tasks) / train, len(test) / adapt))
    print(f"{'method':<34} {'training users/s':>17} {'adaptation users/s':>19}")
    for name, tr, ad in rows:
        print(f"{name:<34} {tr:>17.0f} {ad:>19.0f}")


if __name__ == "__main__":
    main()
