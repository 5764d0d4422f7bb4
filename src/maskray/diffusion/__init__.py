"""The diffusion model: networks, objective, sampler, conditioning, model card, and the latent autoencoder."""
