"""The diffusion model, in one package that nothing below imports from and that imports nothing above it.

- :mod:`~maskray.diffusion.networks`: the base UNet, the ControlNet built from it, and ``ControlledUNet``, the one
  place where the two are joined.
- :mod:`~maskray.diffusion.objective`: the noise schedule and the training loss (v/epsilon, min-SNR-gamma).
- :mod:`~maskray.diffusion.sampling`: one sampling loop for every diffusers scheduler (guidance, region-preserving).
- :mod:`~maskray.diffusion.conditioning`: label maps to condition tensors (resize, one-hot, dropout).
- :mod:`~maskray.diffusion.card`: the typed, versioned model card a run rebuilds itself from.
- :mod:`~maskray.diffusion.store`: saving and loading model folders (safetensors only).
- :mod:`~maskray.diffusion.autoencoder` and :mod:`~maskray.diffusion.autoencoder_losses`: the latent codec
  (diffusers ``AutoencoderKL`` with its measured scale) and the losses that train it.
- :mod:`~maskray.diffusion.pretrained`: a Stable Diffusion folder as the frozen base (its UNet, RGB VAE codec,
  encoded prompt and schedule), checked part by part against the hashes a model card records.
"""
