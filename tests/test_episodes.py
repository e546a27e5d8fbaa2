"""Episodes: shapes, label remapping, determinism, fixed sets, splits, rotations, impossible specs."""

from __future__ import annotations

import pytest
import torch
from conftest import make_synthetic

from metakit.datasets import ClassDataset, class_split, group_split, load_splits, rotate_classes
from metakit.episodes import (
    Episode,
    EpisodeSampler,
    FixedEpisodes,
    MetaBatch,
    as_batch,
    collate,
    random_shift,
    sample_batch,
)
from metakit.errors import MetakitError


@pytest.fixture(scope="module")
def data():
    return make_synthetic()


def test_episode_shapes_and_labels(data):
    ep = EpisodeSampler(data, ways=5, shots=2, queries=3).sample(torch.Generator().manual_seed(0))
    assert ep.support_x.shape == (10, 1, 12, 12) and ep.query_x.shape == (15, 1, 12, 12)
    assert ep.support_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert ep.query_y.tolist() == [c for c in range(5) for _ in range(3)]
    assert ep.support_x.dtype == torch.float32 and 0 <= ep.support_x.min() and ep.support_x.max() <= 1
    assert len(set(ep.classes.tolist())) == 5


def test_support_and_query_are_disjoint_items_of_the_right_class():
    # Each image stores its item id in one pixel and its class in another.
    labels = torch.arange(10).repeat_interleave(20)
    images = torch.zeros(200, 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(200, dtype=torch.uint8)
    images[:, 0, 0, 1] = labels.to(torch.uint8)
    data = ClassDataset("ids", images, labels, [str(c) for c in range(10)])
    ep = EpisodeSampler(data, ways=3, shots=5, queries=7).sample(torch.Generator().manual_seed(1))
    ids = lambda x: (x[:, 0, 0, 0] * 255).round().long().tolist()  # noqa: E731
    cls = lambda x: (x[:, 0, 0, 1] * 255).round().long()  # noqa: E731
    assert set(ids(ep.support_x)).isdisjoint(ids(ep.query_x))
    assert len(set(ids(ep.support_x))) == 15 and len(set(ids(ep.query_x))) == 21
    assert torch.equal(cls(ep.support_x), ep.classes[ep.support_y])
    assert torch.equal(cls(ep.query_x), ep.classes[ep.query_y])


def test_sampling_is_deterministic(data):
    sampler = EpisodeSampler(data, ways=5, shots=1, queries=2)
    a = sampler.sample(torch.Generator().manual_seed(7))
    b = sampler.sample(torch.Generator().manual_seed(7))
    c = sampler.sample(torch.Generator().manual_seed(8))
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.classes, b.classes)
    assert not torch.equal(a.support_x, c.support_x)


def test_meta_batch_layout(data):
    batch = sample_batch(EpisodeSampler(data, 4, 2, 3), 6, torch.Generator().manual_seed(0))
    assert batch.batched and batch.num_tasks == 6
    assert batch.support_x.shape == (6, 8, 1, 12, 12) and batch.query_y.shape == (6, 12)
    assert len(list(batch.tasks())) == 6 and batch[2].support_x.shape == (8, 1, 12, 12)


def test_episode_is_one_task_and_meta_batch_stacks_them(data):
    sampler = EpisodeSampler(data, 4, 2, 3)
    episodes = [sampler.sample(torch.Generator().manual_seed(s)) for s in range(3)]
    batch = collate(episodes)
    assert all(type(e) is Episode and not e.batched and e.num_tasks == 1 for e in episodes)
    assert type(batch) is MetaBatch and batch.num_tasks == 3
    assert type(batch[1]) is Episode and torch.equal(batch[1].query_x, episodes[1].query_x)
    assert torch.equal(batch[2].classes, episodes[2].classes) and batch[2].ways == 4
    assert list(episodes[0].tasks()) == [episodes[0]]  # per-task code walks one episode too
    one = as_batch(episodes[0])
    assert type(one) is MetaBatch and one.support_x.shape == (1, 8, 1, 12, 12)
    assert as_batch(batch) is batch
    with pytest.raises(TypeError):
        episodes[0][0]  # an episode has no task dimension


def test_dataset_items_are_inputs_and_images_is_their_old_name():
    x, y = torch.zeros(4, 1, 3, 3, dtype=torch.uint8), torch.tensor([0, 0, 1, 1])
    new = ClassDataset("new", inputs=x, labels=y, class_names=["a", "b"])
    old = ClassDataset("old", images=x, labels=y, class_names=["a", "b"])
    assert new.inputs is x and old.inputs is x and new.images is new.inputs
    assert torch.equal(new.subset([1]).inputs, x[2:])
    with pytest.raises(AttributeError):
        new.images = x  # the alias is read-only
    with pytest.raises(TypeError, match="inputs"):
        ClassDataset("none", labels=y, class_names=["a", "b"])


def test_fixed_episodes_identical_across_instances_and_order(data):
    sampler = EpisodeSampler(data, 5, 1, 3)
    first = FixedEpisodes(sampler, 20, seed=99)
    second = FixedEpisodes(EpisodeSampler(data, 5, 1, 3), 30, seed=99)
    assert all(torch.equal(first[i].query_x, second[i].query_x) for i in range(20))
    assert torch.equal(first[5].support_x, first[5].support_x)  # random access is stable
    batches = list(first.batches(8))
    assert [b.num_tasks for b in batches] == [8, 8, 4]
    assert torch.equal(batches[1][0].support_x, first[8].support_x)
    other = FixedEpisodes(sampler, 20, seed=100)
    assert not torch.equal(first[0].support_x, other[0].support_x)


@pytest.mark.parametrize(
    ("ways", "shots", "queries", "needle"),
    [(41, 1, 1, "41-way needs 41 classes but split 'synthetic' has only 40"), (5, 10, 3, "shots + queries = 10 + 3 = 13"), (0, 1, 1, "ways must be")],
)
def test_impossible_specs_fail_at_construction(data, ways, shots, queries, needle):
    with pytest.raises(MetakitError, match=needle.replace("+", r"\+")):
        EpisodeSampler(data, ways, shots, queries)


def test_group_split_is_disjoint_by_group(data):
    parts = group_split(data, (0.5, 0.25, 0.25), seed=0)
    groups = {k: set(v.class_groups) for k, v in parts.items()}
    assert groups["train"].isdisjoint(groups["test"]) and groups["val"].isdisjoint(groups["test"])
    assert sum(v.num_classes for v in parts.values()) == data.num_classes
    assert len(groups["train"]) == 4 and len(groups["val"]) == 2
    explicit = group_split(data, None, groups={"train": ["group0"], "val": ["group1"], "test": ["group2"]})
    assert explicit["train"].num_classes == 5
    with pytest.raises(MetakitError, match="no group"):
        group_split(data, None, groups={"train": ["nope"], "val": [], "test": []})


def test_class_split_is_disjoint(data):
    parts = class_split(data, (0.6, 0.2, 0.2), seed=3)
    names = {k: set(v.class_names) for k, v in parts.items()}
    assert names["train"].isdisjoint(names["val"]) and names["train"].isdisjoint(names["test"])
    assert [v.num_classes for v in parts.values()] == [24, 8, 8]
    with pytest.raises(MetakitError, match="fractions"):
        class_split(data, (0.9, 0.2, 0.2))


def test_rotations_become_new_classes_in_the_same_split():
    parts = load_splits("synthetic", split="group", fractions=(0.5, 0.25, 0.25), rotations=True)
    plain = load_splits("synthetic", split="group", fractions=(0.5, 0.25, 0.25))
    assert parts["train"].num_classes == 4 * plain["train"].num_classes
    rot = parts["train"]
    # Class 4c+1 is class c rotated by 90 degrees.
    base = rot.images[rot.items_of(0)]
    turned = rot.images[rot.items_of(1)]
    assert torch.equal(torch.rot90(base, 1, dims=(2, 3)), turned)
    with pytest.raises(MetakitError, match="multiples of 90"):
        rotate_classes(plain["train"], angles=(0, 45))


def test_unknown_split_names_valid_ones():
    with pytest.raises(MetakitError, match="unknown split.*Valid: auto, class, group"):
        load_splits("synthetic", split="vinyals")


def test_augmentation_hook_changes_images_deterministically(data):
    sampler = EpisodeSampler(data, 5, 1, 1, transform=random_shift(2))
    a = sampler.sample(torch.Generator().manual_seed(0))
    b = sampler.sample(torch.Generator().manual_seed(0))
    plain = EpisodeSampler(data, 5, 1, 1).sample(torch.Generator().manual_seed(0))
    assert torch.equal(a.support_x, b.support_x)
    assert a.support_x.shape == plain.support_x.shape and not torch.equal(a.support_x, plain.support_x)


def test_collate_requires_same_shapes(data):
    a = EpisodeSampler(data, 5, 1, 1).sample(torch.Generator().manual_seed(0))
    b = EpisodeSampler(data, 4, 1, 1).sample(torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError):
        collate([a, b])
