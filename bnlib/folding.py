"""Fold batch norm into the layer before it, for inference.

In eval mode batch norm is a fixed per-channel affine map, ``y = s * z + t`` with
``s = gamma / sqrt(running_var + eps)`` and ``t = beta - running_mean * s``. When ``z`` is the
output of a convolution or linear layer ``z = W x + b``, the two compose into one layer::

    W' = s * W   (each output channel's weights scaled)      b' = s * b + t

so the batch norm layer can be removed: one pass over memory less, the same outputs.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from bnlib.modules import _BatchNorm

__all__ = ["fold", "fold_into"]

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BATCH_NORMS = (nn.modules.batchnorm._BatchNorm, _BatchNorm)


@torch.no_grad()
def fold_into(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of ``layer`` (convolution or linear) that computes ``bn(layer(x))`` in eval mode."""
    if bn.running_mean is None:
        raise ValueError("cannot fold a batch norm without running statistics")
    folded = copy.deepcopy(layer)
    scale = torch.rsqrt(bn.running_var + bn.eps)  # (C,)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    folded.weight.mul_(scale.view(-1, *([1] * (layer.weight.dim() - 1))))  # per output channel
    bias = layer.bias if layer.bias is not None else torch.zeros_like(shift)
    folded.bias = nn.Parameter(bias * scale + shift)
    return folded


class _Tracer(fx.Tracer):
    """Keeps every batch norm, bnlib's included, as one node (a leaf) of the traced graph."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, _BATCH_NORMS) or super().is_leaf_module(module, qualified_name)


def fold(model: nn.Module) -> fx.GraphModule:
    """An equivalent copy of ``model`` for inference, with every batch norm that directly follows
    a convolution or linear layer (and is its only reader) folded into it.

    The copy is in eval mode: folding uses the running statistics, so it equals the original
    model's *eval* outputs. The model must be traceable by ``torch.fx`` (no data-dependent
    control flow), as the book's models are.
    """
    model = copy.deepcopy(model).eval()
    traced = fx.GraphModule(model, _Tracer().trace(model))
    modules = dict(traced.named_modules())
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], _BATCH_NORMS):
            continue
        source = node.args[0]
        if (
            not isinstance(source, fx.Node)
            or source.op != "call_module"
            or not isinstance(modules[source.target], _FOLDABLE)
            or len(source.users) != 1
        ):
            continue
        folded = fold_into(modules[source.target], modules[node.target])
        traced.add_submodule(source.target, folded)
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
        traced.delete_submodule(node.target)
    traced.graph.lint()
    traced.recompile()
    return traced.eval()
