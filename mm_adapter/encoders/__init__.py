"""Frozen perception and its way into the adaption prompts: the image encoder (``clip``), video clips as
frames (``video``), decoded media cached as features (``feature_cache``), the trainable projection and an adapter
file's visual part (``projection``), and their settings (``config``).
"""
