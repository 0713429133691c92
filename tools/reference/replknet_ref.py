"""RepLKNet (Ding et al., CVPR 2022) in its training form, as a PyTorch module
whose state_dict keys follow the reference repository (DingXiaoH/RepLKNet-pytorch),
written from the paper and the README's description of the key layout. Only
inference is needed here: no drop path, no checkpointing, no merged form.
"""
import torch.nn as nn


def conv_bn(cin, cout, k, stride=1, groups=1, relu=False):
    layers = nn.Sequential()
    layers.add_module("conv", nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False))
    layers.add_module("bn", nn.BatchNorm2d(cout))
    if relu:
        layers.add_module("nonlinear", nn.ReLU())
    return layers


class LargeKernel(nn.Module):
    """A depthwise k x k conv-BN with a small-kernel conv-BN beside it, summed."""

    def __init__(self, c, k, small):
        super().__init__()
        self.lkb_origin = conv_bn(c, c, k, groups=c)
        self.small_conv = conv_bn(c, c, small, groups=c)

    def forward(self, x):
        return self.lkb_origin(x) + self.small_conv(x)


class RepLKBlock(nn.Module):
    def __init__(self, c, k, small, dw_ratio):
        super().__init__()
        dw = int(c * dw_ratio)
        # Registration order decides state_dict order: pw1, pw2, large_kernel, prelkb_bn.
        self.pw1 = conv_bn(c, dw, 1, relu=True)
        self.pw2 = conv_bn(dw, c, 1)
        self.large_kernel = LargeKernel(dw, k, small)
        self.lk_nonlinear = nn.ReLU()
        self.prelkb_bn = nn.BatchNorm2d(c)

    def forward(self, x):
        y = self.pw2(self.lk_nonlinear(self.large_kernel(self.pw1(self.prelkb_bn(x)))))
        return x + y


class ConvFFN(nn.Module):
    def __init__(self, c, ratio):
        super().__init__()
        hidden = int(c * ratio)
        self.preffn_bn = nn.BatchNorm2d(c)
        self.pw1 = conv_bn(c, hidden, 1)
        self.pw2 = conv_bn(hidden, c, 1)
        self.nonlinear = nn.GELU()

    def forward(self, x):
        return x + self.pw2(self.nonlinear(self.pw1(self.preffn_bn(x))))


class Stage(nn.Module):
    def __init__(self, c, depth, k, small, dw_ratio, ffn_ratio):
        super().__init__()
        blocks = []
        for _ in range(depth):
            blocks += [RepLKBlock(c, k, small, dw_ratio), ConvFFN(c, ffn_ratio)]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


class RepLKNet(nn.Module):
    def __init__(self, large_kernel_sizes, layers, channels, small_kernel, dw_ratio=1.0, ffn_ratio=4.0, num_classes=1000):
        super().__init__()
        c0 = channels[0]
        self.stem = nn.ModuleList([
            conv_bn(3, c0, 3, stride=2, relu=True),
            conv_bn(c0, c0, 3, groups=c0, relu=True),
            conv_bn(c0, c0, 1, relu=True),
            conv_bn(c0, c0, 3, stride=2, groups=c0, relu=True),
        ])
        self.stages = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for i, (k, depth) in enumerate(zip(large_kernel_sizes, layers)):
            self.stages.append(Stage(channels[i], depth, k, small_kernel, dw_ratio, ffn_ratio))
            if i + 1 < len(layers):
                n = channels[i + 1]
                self.transitions.append(nn.Sequential(conv_bn(channels[i], n, 1, relu=True),
                                                      conv_bn(n, n, 3, stride=2, groups=n, relu=True)))
        self.norm = nn.BatchNorm2d(channels[-1])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels[-1], num_classes)

    def forward(self, x):
        for s in self.stem:
            x = s(x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.transitions):
                x = self.transitions[i](x)
        return self.head(self.avgpool(self.norm(x)).flatten(1))
