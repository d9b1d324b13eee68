import torch

from cnnlab.faces.protocol import load_study_data, positions

from .conftest import tiny_config


def _people(d, idx):
    return set(torch.unique(d.faces.labels[idx]).tolist())


def test_default_split_is_identity_disjoint_and_seeded(face_dir):
    d = load_study_data(tiny_config(face_dir))
    train, val, test = _people(d, d.train), _people(d, d.val), _people(d, d.test_images)
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train | val | test) == d.faces.num_people
    assert len(d.train) + len(d.val) + len(d.test_images) == len(d.faces)
    again = load_study_data(tiny_config(face_dir))
    assert torch.equal(again.train, d.train) and torch.equal(again.val_pairs.i, d.val_pairs.i)
    assert torch.equal(again.test_pairs.j, d.test_pairs.j)
    other = load_study_data(tiny_config(face_dir, seed=3))
    assert not torch.equal(other.train, d.train)


def test_validation_and_test_pairs_are_study_pairs_within_their_people(face_dir):
    d = load_study_data(tiny_config(face_dir))
    labels = d.faces.labels
    for pairs, people in ((d.val_pairs, _people(d, d.val)), (d.test_pairs, _people(d, d.test_images))):
        assert torch.equal((labels[pairs.i] == labels[pairs.j]).float(), pairs.same)
        assert bool((pairs.i != pairs.j).all())
        assert _people(d, pairs.i) | _people(d, pairs.j) <= people
        assert 0 < float(pairs.same.mean()) < 1
    a, p, n = d.val_triplets
    assert bool((labels[a] == labels[p]).all()) and bool((labels[a] != labels[n]).all()) and bool((a != p).all())


def test_positions_map_indices_into_a_subset():
    subset = torch.tensor([2, 5, 9, 11])
    assert positions(subset, torch.tensor([9, 2, 11])).tolist() == [2, 0, 3]


def test_sizes_count_people_and_pairs(face_dir):
    d = load_study_data(tiny_config(face_dir))
    s = d.sizes()
    assert s["num_train_people"] + s["num_val_people"] + s["num_test_people"] == 13
    assert s["num_val_pairs"] == len(d.val_pairs) and s["num_test_images"] == len(d.test_images)
