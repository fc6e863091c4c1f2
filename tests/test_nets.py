"""Backbones (tuneclust.nets): every backbone runs on 8/28/32/96 px with 1 or 3 channels, the registry rejects
unknown names, and the CIFAR stem really is a 3x3 stride-1 conv without max-pool (IDFD public code)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tuneclust.nets.backbones import BACKBONES, build_backbone

NAMES = ["convnet", "vgg16", "resnet18", "resnet34"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("name", NAMES)
def test_output_shapes_all_sizes_and_channels(name: str) -> None:
    # the channel count only changes the first conv, so each size is run once (1 channel on the MNIST-like
    # sizes, 3 on the CIFAR/STL ones) plus 3-channel 8 px; eval mode so a batch of one is enough
    torch.manual_seed(0)
    nets = {c: build_backbone(name, c, 16).eval() for c in (1, 3)}
    for channels, size in ((1, 8), (1, 28), (3, 8), (3, 32), (3, 96)):
        with torch.no_grad():
            y = nets[channels](torch.rand(1, channels, size, size))
        assert y.shape == (1, 16), (name, channels, size)
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
def test_pooled_features_without_head_and_train_mode_on_8px(name: str) -> None:
    torch.manual_seed(0)
    net = build_backbone(name, 1, None).train()
    y = net(torch.rand(2, 1, 8, 8))  # BatchNorm in train mode on the 1x1 maps of 8x8 input, batch of 2
    assert y.shape == (2, net.feature_dim)
    y.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_registry_lists_all_and_rejects_unknown() -> None:
    assert sorted(BACKBONES) == sorted(NAMES)
    with pytest.raises(KeyError, match="convnet.*resnet18.*resnet34.*vgg16"):
        build_backbone("resnet50", 3, 128)


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_resnet_cifar_stem(name: str) -> None:
    net = build_backbone(name, 1, 128)
    assert isinstance(net.conv1, nn.Conv2d)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and net.conv1.in_channels == 1
    assert isinstance(net.maxpool, nn.Identity)
    n_blocks = sum(len(getattr(net, f"layer{i}")) for i in range(1, 5))
    assert n_blocks == {"resnet18": 8, "resnet34": 16}[name]


def test_vgg16_has_thirteen_bn_convs() -> None:
    net = build_backbone("vgg16", 3, 128)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 13 and len(bns) == 13
