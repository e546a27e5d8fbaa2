"""Meta-reinforcement learning: task distributions over gymnasium/MuJoCo/Meta-World, MAML-RL and RL².

Modules, each readable on its own:

* :mod:`~metakit.rl.tasks` — the task protocol (``sample_tasks(n, rng)``, ``set_task(task)``) and the
  task distributions (2D navigation, HalfCheetah-Vel/Dir, Ant-Dir, CartPole, Meta-World ML1);
* :mod:`~metakit.rl.rollout` — vectorised episode sampling (gymnasium ``SyncVectorEnv``);
* :mod:`~metakit.rl.advantages` — linear feature baseline and GAE;
* :mod:`~metakit.rl.policies` — Gaussian/categorical MLP policy with functional parameters, GRU policy;
* :mod:`~metakit.rl.maml_rl` — MAML-RL with ProMP's outer update;
* :mod:`~metakit.rl.rl2` — RL² with PPO;
* :mod:`~metakit.rl.training`, :mod:`~metakit.rl.evaluation`, :mod:`~metakit.rl.report`,
  :mod:`~metakit.rl.config`, :mod:`~metakit.rl.cli` — runs, held-out evaluation with baselines, the
  report (curves and ``report.md``), configs and ``metakit rl``.

Needs the ``rl`` extra (``pip install 'metakit[rl]'``); without it every entry point says so in one line.
"""
