"""Fold batch norm into the layer before it, for inference.

In eval mode batch norm is a fixed per-channel affine map, ``y = s * z + t`` with
``s = gamma / sqrt(running_var + eps)`` and ``t = beta - running_mean * s``. When ``z`` is the
output of a convolution or linear layer ``z = W x + b``, the two compose into one layer::

    W' = s * W   (each output channel's weights scaled)      b' = s * b + t

so the batch norm layer can be removed: one pass over memory less, the same outputs.

A batch norm placed after the nonlinearity has no such layer before it, but it folds into the
layer after it, ``W (s * x + t) + b``::

    W' = W * s   (each input channel's weights scaled)       b' = b + W t

exactly for a linear layer, and for a convolution without padding: with zero padding, the padded
border would need the value ``-t / s`` instead of 0, so it is left alone.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from bnlib.modules import _BatchNorm

__all__ = ["fold", "fold_into", "fold_into_next"]

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_TRANSPARENT = (nn.Dropout, nn.Identity)  # nothing in eval mode: a batch norm folds through them
_BATCH_NORMS = (nn.modules.batchnorm._BatchNorm, _BatchNorm)


@torch.no_grad()
def fold_into(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of ``layer`` (convolution or linear) that computes ``bn(layer(x))`` in eval mode."""
    scale, shift = _affine(bn)
    folded = copy.deepcopy(layer)
    folded.weight.mul_(scale.view(-1, *([1] * (layer.weight.dim() - 1))))  # per output channel
    bias = layer.bias if layer.bias is not None else torch.zeros_like(shift)
    folded.bias = nn.Parameter(bias * scale + shift)
    return folded


def _affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, t)`` of the eval-mode map ``bn(z) = s * z + t``, per channel."""
    if bn.running_mean is None:
        raise ValueError("cannot fold a batch norm without running statistics")
    scale = torch.rsqrt(bn.running_var + bn.eps)  # (C,)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def _why_not_into(layer: nn.Module) -> str | None:
    """Why a batch norm cannot fold into ``layer``, the layer that reads its output; None if
    it can."""
    if not isinstance(layer, _FOLDABLE):
        return f"can fold into a linear or convolution layer, got {type(layer).__name__}"
    if isinstance(layer, nn.Linear):
        return None
    padding = layer.padding  # "valid", "same" or a tuple of ints
    if padding == "same" or (not isinstance(padding, str) and any(p != 0 for p in padding)):
        return (
            f"cannot fold a batch norm into a convolution that pads its input "
            f"(padding={padding}): the padded zeros do not go through the batch norm"
        )
    if layer.groups != 1:
        return f"cannot fold into a grouped convolution (groups={layer.groups})"
    return None


@torch.no_grad()
def fold_into_next(bn: nn.Module, layer: nn.Module) -> nn.Module:
    """A copy of ``layer`` (linear, or convolution without padding) that computes
    ``layer(bn(x))`` in eval mode: the batch norm folded into the layer that reads its output.

    Raises:
        ValueError: the convolution pads its input (the padded zeros would not go through the
            batch norm), groups its channels, or the channel counts differ.
    """
    if (reason := _why_not_into(layer)) is not None:
        raise ValueError(reason)
    inputs = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
    scale, shift = _affine(bn)
    if scale.numel() != inputs:
        raise ValueError(f"the batch norm has {scale.numel()} channels, the layer reads {inputs}")
    folded = copy.deepcopy(layer)
    view = (1, -1, *([1] * (layer.weight.dim() - 2)))  # along the input channels
    folded.weight.mul_(scale.view(view))
    carried = (layer.weight * shift.view(view)).flatten(1).sum(1)  # W t, per output channel
    bias = layer.bias if layer.bias is not None else torch.zeros_like(carried)
    folded.bias = nn.Parameter(bias + carried)
    return folded


class _Tracer(fx.Tracer):
    """Keeps every batch norm, bnlib's included, as one node (a leaf) of the traced graph."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, _BATCH_NORMS) or super().is_leaf_module(module, qualified_name)


def _reader(node: fx.Node, modules: dict) -> fx.Node | None:
    """The layer that alone reads ``node``'s output, through modules that do nothing in eval
    mode, when a batch norm at ``node`` can fold into it; else None."""
    while len(node.users) == 1:
        (user,) = node.users
        if user.op != "call_module" or user.args[:1] != (node,) or len(user.args) != 1:
            return None
        module = modules[user.target]
        if isinstance(module, _TRANSPARENT):
            node = user
            continue
        return user if _why_not_into(module) is None else None
    return None


def fold(model: nn.Module) -> fx.GraphModule:
    """An equivalent copy of ``model`` for inference, with every batch norm folded away that can
    be: into the convolution or linear layer it directly follows (when it is that layer's only
    reader), else into the linear layer, or convolution without padding, that alone reads its
    output (through dropout or identity layers, which do nothing in eval mode): the case of a
    batch norm placed after the nonlinearity.

    The copy is in eval mode: folding uses the running statistics, so it equals the original
    model's *eval* outputs. The model must be traceable by ``torch.fx`` (no data-dependent
    control flow), as the book's models are.
    """
    model = copy.deepcopy(model).eval()
    traced = fx.GraphModule(model, _Tracer().trace(model))
    modules = dict(traced.named_modules())
    calls = [n.target for n in traced.graph.nodes if n.op == "call_module"]
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], _BATCH_NORMS):
            continue
        bn, source = modules[node.target], node.args[0]
        if (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(modules[source.target], _FOLDABLE)
            and len(source.users) == 1
            and calls.count(source.target) == 1
        ):
            traced.add_submodule(source.target, fold_into(modules[source.target], bn))
        elif (reader := _reader(node, modules)) is not None and calls.count(reader.target) == 1:
            traced.add_submodule(reader.target, fold_into_next(bn, modules[reader.target]))
        else:
            continue
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
        traced.delete_submodule(node.target)
        modules = dict(traced.named_modules())
    traced.graph.lint()
    traced.recompile()
    return traced.eval()
