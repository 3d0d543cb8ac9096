"""The ops the gradient path analysis follows, by kind: the tables `graph._ChannelTracer` dispatches on.

Modules are matched by type (subclasses included), functions by identity, methods by name.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

EMBEDDINGS = (nn.Embedding,)  # weighted layers reading integer ids: they pass no gradient to their input
WEIGHTED_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                    nn.ConvTranspose3d, nn.Linear, *EMBEDDINGS)
CHANNELWISE_MODULES = (
    nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.SiLU, nn.GELU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.Hardtanh,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.ZeroPad2d, nn.ConstantPad2d,
    nn.ReflectionPad2d, nn.ReplicationPad2d, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.Threshold,
    nn.Softshrink, nn.Hardshrink, nn.RReLU, nn.FeatureAlphaDropout, nn.LPPool1d, nn.LPPool2d,
    nn.FractionalMaxPool2d, nn.FractionalMaxPool3d, nn.ZeroPad1d, nn.ZeroPad3d, nn.ConstantPad1d,
    nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad3d,
    nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d,
)
CHANNELWISE_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.silu, F.gelu, F.mish, F.hardswish, F.hardsigmoid, F.elu,
    F.sigmoid, F.tanh, torch.relu, torch.sigmoid, torch.tanh, F.dropout, F.dropout2d,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    F.interpolate, F.softplus, torch.sqrt, torch.rsqrt, torch.exp, torch.log, torch.abs, torch.neg,
    torch.square, torch.clamp, torch.erf, operator.neg, F.hardtanh, F.celu, F.selu, F.softsign,
    F.tanhshrink, F.logsigmoid, F.hardshrink, F.softshrink, F.threshold, F.rrelu, F.prelu,
    F.alpha_dropout, F.dropout1d, F.dropout3d, F.feature_alpha_dropout, F.lp_pool1d, F.lp_pool2d,
    F.adaptive_avg_pool3d, F.adaptive_max_pool3d, torch.sin, torch.cos, torch.reciprocal, torch.log1p,
    torch.expm1, torch.log2, torch.clamp_min, torch.clamp_max, torch.nan_to_num,
    F.batch_norm, F.instance_norm, torch.batch_norm, torch.instance_norm,  # per channel (a norm module's own forward)
}
CHANNELWISE_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "float", "sqrt", "rsqrt", "exp", "log", "abs", "neg", "square", "clamp",
                       "half", "double", "bfloat16", "to", "type", "type_as", "cpu", "cuda", "sin", "cos",
                       "reciprocal", "log1p", "expm1", "log2", "clamp_min", "clamp_max", "nan_to_num"}
# New tensors that take only a shape, dtype and device from a traced tensor: constants.
FACTORIES = {torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like, torch.rand_like, torch.randn_like,
             torch.randint_like, "new_zeros", "new_ones", "new_full", "new_empty", "new_tensor"}
CAST_LIKE = {"type_as", "to"}  # const.type_as(x), const.to(x): x gives only a dtype and device, the result is a constant
# Ops whose result depends on their input but carries no gradient (comparisons, rounding, casts
# to integers): their output is the elementwise map of the operands, detached.
NO_GRADIENT_FUNCTIONS = {operator.gt, operator.lt, operator.ge, operator.le, operator.eq, operator.ne,
                         operator.and_, operator.or_, operator.xor, operator.invert, torch.gt, torch.lt,
                         torch.ge, torch.le, torch.eq, torch.ne, torch.sign, torch.round, torch.floor,
                         torch.ceil, torch.trunc, torch.logical_and, torch.logical_or, torch.logical_not,
                         torch.logical_xor, torch.isnan, torch.isinf, torch.isfinite, torch.signbit}
NO_GRADIENT_METHODS = {"gt", "lt", "ge", "le", "eq", "ne", "sign", "round", "floor", "ceil", "trunc",
                       "logical_and", "logical_or", "logical_not", "isnan", "isinf", "isfinite", "bool",
                       "long", "int"}
ELEMENTWISE_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.mul, operator.imul,
                         operator.truediv, operator.pow, torch.add, torch.sub, torch.mul, torch.div, torch.pow,
                         torch.maximum, torch.minimum, torch.fmax, torch.fmin, torch.where, torch.lerp,
                         torch.addcmul, torch.addcdiv, torch.atan2, torch.hypot, torch.rsub, torch.true_divide,
                         torch.masked_fill}
ELEMENTWISE_METHODS = {"add", "sub", "mul", "div", "pow", "maximum", "minimum", "where", "lerp", "addcmul",
                       "addcdiv", "true_divide", "masked_fill", "rsub"}
# In-place methods (x.add_(y), x.relu_()): x = x.add(y) for every later use of that tensor.
IN_PLACE_METHODS = {f"{name}_" for name in ELEMENTWISE_METHODS | CHANNELWISE_METHODS | NO_GRADIENT_METHODS
                    if hasattr(torch.Tensor, f"{name}_")}
OVERWRITES = {"copy_", "zero_", "fill_"}  # in-place methods whose result drops the tensor's old values
MULTIPLY = {operator.mul, operator.imul, torch.mul, "mul"}
REDUCTIONS = {torch.mean, torch.amax, torch.amin, torch.sum, torch.var, torch.std, torch.logsumexp,
              torch.prod, torch.nansum, torch.nanmean, torch.norm, torch.linalg.vector_norm, "mean", "amax",
              "amin", "sum", "var", "std", "logsumexp", "prod", "nansum", "nanmean", "norm"}
REDUCTION_DIM = {torch.norm: 2, "norm": 2, torch.linalg.vector_norm: 2}  # index of `dim` among the args; else 1
ARG_REDUCTIONS = {torch.argmax, torch.argmin, "argmax", "argmin"}  # a reduction's indices: no gradient
MAX_MIN = {torch.max, torch.min, "max", "min"}  # over a dim: (values, indices); of two tensors: elementwise
# Weightless ops that mix the tensor along one dim: (index of that dim among the args, its default).
ALONG_DIM = {torch.softmax: (1, None), F.softmax: (1, None), torch.log_softmax: (1, None),
             F.log_softmax: (1, None), F.softmin: (1, None), "softmax": (1, None),
             "log_softmax": (1, None), F.normalize: (2, 1)}
SOFTMAX_MODULES = (nn.Softmax, nn.LogSoftmax, nn.Softmin)
MATMULS = {operator.matmul, torch.matmul, torch.bmm, torch.mm, "matmul", "bmm", "mm"}
ADDED_PRODUCTS = {torch.baddbmm, torch.addmm, "baddbmm", "addmm"}  # input + a @ b
RESHAPES = {torch.flatten, "flatten", "view", "reshape", torch.reshape, "view_as", "reshape_as", torch.unsqueeze,
            "unsqueeze", torch.squeeze, "squeeze", torch.unflatten, "unflatten"}
EXPANDS = {"expand", "expand_as", torch.broadcast_to, "broadcast_to"}
REPEATS = {"repeat", torch.tile, "tile"}
CUMULATIVES = {torch.cumsum, torch.cumprod, torch.logcumsumexp, "cumsum", "cumprod", "logcumsumexp"}
SORTS = {torch.sort, "sort"}
TOP_K = {torch.topk, "topk"}  # (values, indices), along `dim`, the third argument
TAKEN_ALONG = {torch.gather: 1, "gather": 1, torch.take_along_dim: 2, "take_along_dim": 2}  # -> index of `dim`
INDEXING = {torch.narrow: "narrow", "narrow": "narrow", torch.select: "select", "select": "select",
            torch.index_select: "index_select", "index_select": "index_select"}
PERMUTES = {torch.permute, "permute"}
TRANSPOSES = {torch.transpose, "transpose"}
SPLITS = {torch.split, torch.chunk, "split", "chunk"}
UNBINDS = {torch.unbind, "unbind"}
DETACHES = {torch.detach, "detach"}
CONCATS = {torch.cat, torch.concat}
FLIPS = {torch.flip, "flip"}
ROLLS = {torch.roll, "roll"}
CHANNEL_SHUFFLES = {torch.channel_shuffle, torch.native_channel_shuffle}
PIXEL_SHUFFLES = {torch.pixel_shuffle: True, torch.pixel_unshuffle: False}  # -> True for shuffle, False for unshuffle
FUNCTIONAL_WEIGHTED = {F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
                       F.bilinear, F.embedding, F.embedding_bag}  # refused with a hint: weights outside modules
FUNCTIONAL_LAYERS = {F.linear, F.conv1d, F.conv2d, F.conv3d, F.embedding}  # positions when on a model's weight
# a @ W with W a 2-D Parameter of the model: a Linear (position), as (weight index, input index) in the arguments
PARAMETER_PRODUCTS = {
    torch.matmul: (1, 0), torch.Tensor.matmul: (1, 0), torch.Tensor.__matmul__: (1, 0), torch.mm: (1, 0),
    torch.Tensor.mm: (1, 0), torch.addmm: (2, 1), torch.Tensor.addmm: (2, 1),
}
FIXED_FILTERS = {F.conv1d, F.conv2d, F.conv3d}  # with a weight that takes no gradient: weightless channel mixing
SUPPORTED = (
    "weighted layers (Conv1d/2d/3d, ConvTranspose, Linear, Embedding, and their subclasses; x @ W, "
    "addmm(b, x, W) and an einsum that is x @ W ('...d,de->...e'), with W a 2-d Parameter, and "
    "F.linear / F.conv*d / F.embedding on a Parameter; grouped "
    "convs group by group; a Linear along a dim without channels, as a token-mixing MLP; a Conv1d sliding "
    "along the channels, as ECA; a layer reading constants, as a position encoding; a Linear or conv "
    "reading channels told apart along the tokens or the batch, with a copy of its outputs per distinct "
    "input); integer "
    "(token id) inputs read by an Embedding; channel-wise modules "
    "and functions (BatchNorm, InstanceNorm, F.batch_norm, activations, pooling, upsampling/interpolate, dropout, "
    "padding, Identity, Flatten/Unflatten, casts, elementwise math such as sqrt/exp/pow); elementwise "
    "+ - * / **, maximum/minimum, where, lerp; comparisons, rounding, sign and argmax/argmin (no gradient); "
    "channel indexing (slices, strided slices, ints, None, one list of ints, narrow, select, "
    "index_select with a constant index), torch.cat (along another dim: the positions told apart where "
    "the parts differ, as a class token), torch.stack, split/chunk/unbind, "
    "permute/transpose, flatten/view/reshape/(un)squeeze that keep the channels' order, "
    "expand/repeat/tile, F.pad, torch.roll/flip, cumsum/cumprod, channel shuffles (view-transpose-view, "
    "nn.ChannelShuffle), PixelShuffle/PixelUnshuffle, .detach(); item assignment at slices and ints and "
    "in-place methods (add_, mul_, copy_, zero_, ...) into tensors no other tensor in use views; "
    "zeros_like/full_like/randn_like/new_zeros and the like (constants); F.grid_sample (each channel "
    "sampled where the whole grid says); mixing the channels without "
    "weights: LayerNorm, RMSNorm, F.conv2d with a fixed filter in a buffer (a blur), GroupNorm, LocalResponseNorm, GLU, softmax / log_softmax / normalize, mean/sum/var/std/amax/amin/"
    "logsumexp/prod/norm and max/min/sort/topk, gather / take_along_dim, @ / matmul / bmm / baddbmm / addmm / einsum and "
    "scaled_dot_product_attention; "
    "reshapes that spread the channels over several dims (attention heads, also folded into the batch) and "
    "back, or that fold them with other dims (space-to-depth, patches); products keeping both operands' "
    "channels (XCiT's q k^T over the tokens); F.fold / nn.Fold and F.unfold / nn.Unfold; "
    "nn.MultiheadAttention (unrolled into its Linear projections), also inside nn.Transformer and its encoder "
    "and decoder (layers); nn.RNN / nn.LSTM / nn.GRU and their cells on "
    "padded tensors (unrolled step by step: an input Linear per layer, a hidden Linear per step)"
)
