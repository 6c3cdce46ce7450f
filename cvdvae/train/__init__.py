"""Training the LR encoder against a frozen VD-VAE (``cvdvae-train``).

The objective is the paper's (architecture.md 5.4): for the first ``ky`` latent groups,
KL(q(z|x) || q(z|y)) with z drawn from the frozen HR posterior. Only ``encoder_y`` and the
``enc_y`` heads learn.
"""
