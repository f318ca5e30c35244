"""bnlib.diagnose: each problem found on a model that has it, nothing on one that has none."""

import re

import pytest
import torch
from torch import nn

import bnlib
from bnlib import diagnose
from bnlib.doctor import PROBLEMS
from bnlib.models import ArticleCNN
from bnlib.training import recalibrate


def batches(n=8, size=32, features=6, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, features, generator=g) + shift, torch.zeros(size)) for _ in range(n)]


def healthy(norm=nn.BatchNorm1d):
    """No bias before the batch norm, statistics re-estimated on the data, evaluation mode."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 10, bias=False), norm(10), nn.ReLU(), nn.Linear(10, 3))
    return recalibrate(net, batches(), 8)


def problems(findings):
    return [(f.problem, f.module) for f in findings]


@pytest.mark.parametrize("norm", [nn.BatchNorm1d, bnlib.BatchNorm1d])
def test_a_healthy_model_has_no_finding_and_is_left_unchanged(norm):
    net = healthy(norm)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert diagnose(net, batches(seed=1)) == []
    assert diagnose(net) == []
    assert not net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key  # the data went through a copy


def test_each_structural_problem_names_its_layer():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)
            self.drop = nn.Dropout(0.3)
            self.bn = nn.BatchNorm1d(6)
            self.bn2 = nn.BatchNorm1d(6)

        def forward(self, x):
            return self.bn(torch.relu(self.bn(torch.relu(self.fc(x)))) + self.bn2(self.drop(x)))

    found = problems(diagnose(Twice().eval()))
    assert found == [("dropout_before_bn", "bn2"), ("called_twice", "bn")]
    found = diagnose(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)).eval())
    assert problems(found) == [("bias_before_bn", "1")]
    assert "0 adds a bias" in found[0].evidence and "bias=False" in found[0].fix


def test_the_articles_cnn_has_a_bias_before_each_batch_norm():
    found = problems(diagnose(ArticleCNN(norm="torch")))
    assert found == [
        ("train_mode", ""),
        ("bias_before_bn", "bn1"),
        ("bias_before_bn", "bn2"),
        ("bias_before_bn", "fc1_bn"),
    ]
    assert problems(diagnose(ArticleCNN(norm=None))) == []  # no batch norm, nothing to say


def test_modes_frozen_layers_and_layers_without_running_statistics():
    net = healthy().train()
    for p in net[1].parameters():
        p.requires_grad_(False)  # frozen, but train() still updates its statistics
    assert problems(diagnose(net)) == [("train_mode", ""), ("frozen_but_updating", "1")]
    net[1].eval()  # the usual fix
    assert problems(diagnose(net)) == [("train_mode", "")]
    torch.manual_seed(0)
    batchwise = nn.Sequential(
        nn.Linear(6, 4, bias=False), nn.BatchNorm1d(4, track_running_stats=False)
    )
    assert problems(diagnose(batchwise.eval(), batches())) == [("no_running_stats", "1")]


def test_small_batches_and_stale_statistics_need_data():
    net = healthy()
    found = diagnose(net, batches(size=4))
    assert (
        problems(found) == [("few_examples", "")] and "batches of 4 examples" in found[0].evidence
    )
    shifted = diagnose(net, batches(shift=3.0))  # another domain: the running means are off
    assert problems(shifted) == [("stale_statistics", "1")]
    assert "recalibrate" in shifted[0].fix
    scaled = [(3 * x, y) for x, y in batches()]  # the variances are 9 times the running ones
    assert problems(diagnose(net, scaled)) == [("stale_statistics", "1")]
    assert diagnose(net, batches(shift=3.0), max_shift=100, max_ratio=100) == []


def test_a_model_fx_cannot_trace_is_followed_through_a_forward_pass():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.bn = nn.Linear(6, 6), nn.BatchNorm1d(6)

        def forward(self, x):
            if x.sum() > 1e9:  # data-dependent Python: torch.fx cannot trace it
                return x
            return self.bn(self.fc(x))

    net = DataDependent().eval()
    found = diagnose(net)
    assert problems(found) == [("structure_unknown", "")] and "pass a loader" in found[0].fix
    assert ("bias_before_bn", "bn") in problems(diagnose(net, batches()))


def test_findings_in_french_and_a_clear_error_for_another_language():
    found = diagnose(ArticleCNN(norm="torch"), lang="fr")
    assert "mode entraînement" in found[0].evidence and "model.eval()" in found[0].fix
    assert "bias=False" in found[1].fix and "conv1" in found[1].evidence
    assert PROBLEMS["fr"].keys() == PROBLEMS["en"].keys()
    assert str(found[1]).startswith("bn1: conv1 ajoute un biais")
    torch.manual_seed(0)
    stale = diagnose(healthy(), batches(shift=3.0), lang="fr")[0]
    assert re.search(r"à \d+,\d\d écarts-types glissants", stale.evidence)  # a decimal comma
    with pytest.raises(ValueError, match="lang must be one of \\['en', 'fr'\\], got 'de'"):
        diagnose(nn.BatchNorm1d(3), lang="de")
