"""The paper's metrics (section 4.1) on any model the pipeline runs (``cvdvae eval``).

For each HR image: the LR input is made with the MATLAB bicubic degradation (as the
training data), ``n`` samples are drawn from the seed, and the samples are scored for
consistency (LR-PSNR), diversity (APD: average pairwise MSE and LPIPS) and fidelity
(PSNR, SSIM, LPIPS against the HR image). Means over inputs are reported with the protocol.
``scores`` scores one input; ``evaluate`` runs a data set through a ``Pipeline``.
"""
