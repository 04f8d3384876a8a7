"""minifm: vision foundation models from scratch, cross-checked against Hugging Face.

Dimension names used in shape comments throughout the package:

    B  batch            N  tokens (sequence length)    D  model width
    H  attention heads  Dh head dimension (D / H)      P  patch size
    C  channels         T  diffusion timesteps         L  layers
    Hi, Wi  image height and width                     Gh, Gw  patch grid height and width
"""

__version__ = "0.1.0"
