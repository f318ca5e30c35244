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

    The original model is left untouched; build the optimizer on the returned model. A subclass
    of a batch norm class raises ``TypeError``: its twin would lose what the subclass adds.

    Example::

        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
        >>> convert(net)[1]
        BatchNorm2d(4, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)
    """
    if to not in ("bnlib", "torch"):
        raise ValueError(f"convert(model, to=...) takes 'bnlib' or 'torch', got {to!r}")
    mapping = _TORCH_TO_BNLIB if to == "bnlib" else _BNLIB_TO_TORCH
    model = copy.deepcopy(model)
    target = _target(model, "model", mapping)
    if target is not None:
        return _twin(model, target)
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            target = _target(child, f"{parent_name}.{name}" if parent_name else name, mapping)
            if target is not None:
                setattr(parent, name, _twin(child, target))
    return model


def _target(layer: nn.Module, path: str, mapping: dict) -> type[nn.Module] | None:
    """The class ``layer`` converts to, None if it is not a batch norm of ``mapping``; a
    subclass raises: its twin would lose what the subclass adds (a forward, attributes)."""
    if type(layer) in mapping:
        return mapping[type(layer)]
    for source in mapping:
        if isinstance(layer, source):
            raise TypeError(
                f"convert found {path} of type {type(layer).__name__}, a subclass of "
                f"{source.__module__}.{source.__name__}; its twin would lose what the subclass "
                f"adds (its forward, its attributes), so it is not converted. Replace it by a "
                f"plain {source.__name__} before converting, or convert it by hand"
            )
    return None
