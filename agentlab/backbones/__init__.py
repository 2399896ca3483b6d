"""Backbones: plain `nn.Module`s that plasticity modules wrap by layer name."""
