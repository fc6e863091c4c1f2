"""Losses as pure functions of tensors (torch only). One module per method family."""
