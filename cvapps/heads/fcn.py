"""FCN-8s head (Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation").

Score maps from 1x1 convolutions on the stride-8, 16 and 32 backbone features are fused
coarse-to-fine: the stride-32 scores are upsampled x2 by a learned ``ConvTranspose2d`` and added to
the stride-16 scores, that sum is upsampled x2 and added to the stride-8 scores, and a final x8
``ConvTranspose2d`` brings the result back to the input resolution. Every transposed convolution
starts as bilinear interpolation (:func:`bilinear_kernel`) and is learned from there.

Sizes, as in the paper, come out right by padding and cropping rather than by interpolating to a
target size: the input is padded (bottom/right) to a multiple of 32 so every backbone, whatever
its padding convention, gives exactly ``H/8``, ``H/16``, ``H/32`` maps; each transposed
convolution (kernel ``2f``, stride ``f``, no padding) returns ``(n + 1) f`` pixels and is cropped
at offset ``f/2`` (the paper's "offset crop"); the last crop removes the padding, so the output is
exactly the input size for any ``H x W`` (e.g. 250 x 333). Cropping at ``f/2`` makes the initial
upsampling equal to ``F.interpolate(..., mode="bilinear", align_corners=False)`` in the interior.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """``(channels, channels, k, k)`` ConvTranspose2d weight that upsamples each channel bilinearly.

    Written by hand because torchvision has no such helper (FCN's reference code has the same
    ``get_upsampling_weight``). Channel ``c`` only feeds channel ``c`` (a diagonal weight), the 2-D
    filter is the outer product of the 1-D tent ``1 - |x - centre| / factor``, and for stride
    ``factor = ceil(k / 2)`` the taps that land on each output pixel sum to 1, so a constant map
    stays constant away from the borders.
    """
    factor = (kernel_size + 1) // 2
    centre = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    x = torch.arange(kernel_size, dtype=torch.float32)
    tent = 1 - (x - centre).abs() / factor
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    idx = torch.arange(channels)
    weight[idx, idx] = tent[:, None] * tent[None, :]
    return weight


class UpsamplingConvTranspose2d(nn.ConvTranspose2d):
    """The FCN's learned upsampling: a plain transposed convolution (kernel 2f, stride f, no bias),
    with a faster CPU inference path for the same numbers.

    oneDNN's transposed convolution is slow for the final x8 layer (few channels, kernel 16): 10-15 ms
    for a batch of 8 at 160 px on one core, against 1.8 ms for the same output computed as a
    convolution + pixel shuffle (:func:`transposed_conv_as_subpixel`), a quarter of the FCN head's
    time. Training, CUDA and ONNX export run the transposed convolution itself.
    """

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if x.device.type != "cpu" or output_size is not None or self.stride[0] < 4:
            return super().forward(x, output_size)
        if torch.is_grad_enabled() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            # oneDNN runs the large-stride transposed convolution 2-3x faster on channels_last input
            return super().forward(x.contiguous(memory_format=torch.channels_last))
        return transposed_conv_as_subpixel(self, x)


def transposed_conv_as_subpixel(conv: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a stride-f, kernel-2f transposed convolution (no padding, groups or bias), computed
    as a 2x2 convolution to ``C_out f^2`` channels followed by ``pixel_shuffle(f)`` (equal up to float
    rounding). Output row ``f i + a`` is ``x[i] W[a] + x[i - 1] W[f + a]``: two taps per axis, which the
    2x2 convolution over ``x`` padded by 1 gathers, with the kernel split into its ``f x f`` phases.
    """
    f = conv.stride[0]
    c_in, c_out, k, _ = conv.weight.shape
    if k != 2 * f or conv.bias is not None or conv.padding != (0, 0) or conv.groups != 1 or conv.stride[1] != f:
        return nn.ConvTranspose2d.forward(conv, x)
    phases = conv.weight.reshape(c_in, c_out, 2, f, 2, f).flip(2, 4)  # (c, o, tap_y, a, tap_x, b)
    weight = phases.permute(1, 3, 5, 0, 2, 4).reshape(c_out * f * f, c_in, 2, 2)
    x = x.contiguous(memory_format=torch.channels_last)  # pixel_shuffle is 3x faster from NHWC here
    return F.pixel_shuffle(F.conv2d(F.pad(x, (1, 1, 1, 1)), weight), f)


def bilinear_upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    """Learned x``factor`` upsampling: a transposed convolution (kernel 2f, stride f, no bias), bilinear
    at init. Use it through :func:`upsample_crop`, which applies the FCN offset crop.
    """
    conv = UpsamplingConvTranspose2d(channels, channels, 2 * factor, stride=factor, bias=False)
    with torch.no_grad():
        conv.weight.copy_(bilinear_kernel(channels, 2 * factor))
    return conv


def upsample_crop(conv: nn.ConvTranspose2d, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """x (B, K, h, w) -> conv(x) cropped at offset ``f // 2`` to ``size`` (default (f h, f w)).

    The transposed conv returns ``(h + 1) f`` rows; ``size`` must be at most ``f h`` x ``f w``.
    """
    f = conv.stride[0]
    h, w = size if size is not None else (x.shape[-2] * f, x.shape[-1] * f)
    return center_crop_offset(conv(x), f // 2, h, w)


def center_crop_offset(x: torch.Tensor, offset: int, h: int, w: int) -> torch.Tensor:
    """``x[..., offset:offset + h, offset:offset + w]`` with a clear error when ``x`` is too small."""
    if x.shape[-2] < offset + h or x.shape[-1] < offset + w:
        raise RuntimeError(f"cannot crop {h}x{w} at offset {offset} from a {x.shape[-2]}x{x.shape[-1]} map")
    return x[..., offset:offset + h, offset:offset + w]


class AuxHead(nn.Sequential):
    """Auxiliary classifier on the stride-16 feature (as torchvision's FCNHead): 3x3 conv-BN-ReLU,
    dropout, 1x1 conv to K scores. Used only for the training loss."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        mid = max(in_channels // 4, 16)
        super().__init__(
            nn.Conv2d(in_channels, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(mid, num_classes, 1),
        )


class FCN8sHead(nn.Module):
    """FCN-8s fusion of stride-8/16/32 features into per-pixel class scores.

    in_channels: channels of the (stride 8, stride 16, stride 32) features.
    hidden: width of an optional 3x3 conv-BN-ReLU block on the stride-32 feature before its score
    layer (FCN's fc6/fc7 in small form); 0 scores the backbone feature directly.
    forward(feats (c8, c16, c32), size (H, W)) -> logits (B, K, H, W), where the feature maps are
    exactly H/8, H/16, H/32 of an input whose sides are multiples of 32 and (H, W) is the part of
    that input to return (the original size before padding).
    """

    max_stride = 32

    def __init__(self, in_channels: tuple[int, int, int], num_classes: int, hidden: int = 0) -> None:
        super().__init__()
        c8, c16, c32 = in_channels
        self.context = (nn.Sequential(nn.Conv2d(c32, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden),
                                      nn.ReLU(inplace=True), nn.Dropout2d(0.1))
                        if hidden else nn.Identity())
        self.score32 = nn.Conv2d(hidden or c32, num_classes, 1)
        self.score16 = nn.Conv2d(c16, num_classes, 1)
        self.score8 = nn.Conv2d(c8, num_classes, 1)
        # The paper zero-initialises the skip score layers so training starts from the coarse
        # prediction and adds detail; their weights still receive gradients.
        for conv in (self.score16, self.score8):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.up32 = bilinear_upsampler(num_classes, 2)   # stride 32 -> 16
        self.up16 = bilinear_upsampler(num_classes, 2)   # stride 16 -> 8
        self.up8 = bilinear_upsampler(num_classes, 8)    # stride 8 -> 1

    def forward(self, feats: tuple[torch.Tensor, torch.Tensor, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        f8, f16, f32 = feats
        s16 = self.score16(f16)
        x = upsample_crop(self.up32, self.score32(self.context(f32)), s16.shape[-2:]) + s16
        s8 = self.score8(f8)
        x = upsample_crop(self.up16, x, s8.shape[-2:]) + s8
        return upsample_crop(self.up8, x, size)


def pad_to_multiple(images: torch.Tensor, multiple: int, value: float) -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom/right so H and W are multiples of ``multiple``."""
    h, w = images.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        images = F.pad(images, (0, pw, 0, ph), value=value)
    return images
