"""Shared pieces of huabu's training loops (huabu-tiny stages, LoRA, ControlNet, motion modules)."""
