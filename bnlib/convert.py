"""Swap batch norm implementations inside a model: PyTorch's for bnlib's, or back."""

from __future__ import annotations

import copy

from torch import nn

from bnlib import modules

__all__ = ["convert"]

_TORCH_TO_BNLIB = {
    nn.BatchNorm1d: modules.BatchNorm1d,
    nn.BatchNorm2d: modules.BatchNorm2d,
    nn.BatchNorm3d: modules.BatchNorm3d,
}
_BNLIB_TO_TORCH = {ours: theirs for theirs, ours in _TORCH_TO_BNLIB.items()}


def _twin(layer: nn.Module, target: type[nn.Module]) -> nn.Module:
    """A ``target`` layer with the configuration, parameters and statistics of ``layer``."""
    first = next(iter(layer.state_dict().values()), None)
    twin = target(
        layer.num_features,
        eps=layer.eps,
        momentum=layer.momentum,
        affine=layer.affine,
        track_running_stats=layer.track_running_stats,
        device=None if first is None else first.device,
        dtype=None if first is None else first.dtype,
        # only when False: PyTorch before 2.14 has no ``bias`` argument
        **({} if layer.bias is not None or not layer.affine else {"bias": False}),
    )
    twin.load_state_dict(layer.state_dict())
    twin.train(layer.training)
    for name, parameter in layer.named_parameters(recurse=False):
        getattr(twin, name).requires_grad_(parameter.requires_grad)
    return twin


def convert(model: nn.Module, to: str = "bnlib") -> nn.Module:
    """Return a copy of ``model`` whose batch norm layers are bnlib's (``to="bnlib"``) or
    PyTorch's (``to="torch"``), with the same parameters, running statistics and mode.

    The original model is left untouched; build the optimizer on the returned model.

    Example::

        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
        >>> convert(net)[1]
        BatchNorm2d(4, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)
    """
    if to not in ("bnlib", "torch"):
        raise ValueError(f"convert(model, to=...) takes 'bnlib' or 'torch', got {to!r}")
    mapping = _TORCH_TO_BNLIB if to == "bnlib" else _BNLIB_TO_TORCH
    model = copy.deepcopy(model)
    if type(model) in mapping:
        return _twin(model, mapping[type(model)])
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in mapping:
                setattr(parent, name, _twin(child, mapping[type(child)]))
    return model
